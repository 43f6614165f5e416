"""``mbsync`` (Debian isync) against the IMAP server: a full two-way sync of a user that
holds the Dovecot fixture messages, with flags going both ways.

The server runs on the test's loop; mbsync runs as a subprocess in a worker thread.
Steps: import the fixture user; sync everything down into a local Maildir; change flags
and add a message on both sides; sync again; check both sides hold the same messages
with the same flags.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from tests.integration.imap.conftest import Env, make_config, write_users

from aiodbox.importers.dovecot_import import import_dovecot

pytestmark = [pytest.mark.asyncio, pytest.mark.interop]

MBSYNC = shutil.which("mbsync")
# Maildir info flags <-> IMAP flags (mbsync's mapping).
MAILDIR_FLAGS = {
    "D": "\\Draft",
    "F": "\\Flagged",
    "R": "\\Answered",
    "S": "\\Seen",
    "T": "\\Deleted",
}


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    from aiodbox.auth import PasswdFileAuthenticator
    from aiodbox.imap.server import ImapServer
    from aiodbox.storage import Storage

    write_users(tmp_path / "users")
    config = make_config(tmp_path, "mdbox")
    storage = Storage(config.storage)
    auth = PasswdFileAuthenticator(config.auth.passwd_file, failure_delay=0)
    server = ImapServer(config, storage, auth)
    await server.start()
    try:
        yield Env(server, storage, auth, config, tmp_path)
    finally:
        await server.shutdown(timeout=5)
        await auth.aclose()
        await storage.close()


def _write_config(root: Path, port: int) -> Path:
    local = root / "maildir"
    local.mkdir()
    rc = root / "mbsyncrc"
    rc.write_text(
        f"""IMAPAccount test
Host 127.0.0.1
Port {port}
User alice
Pass secret
SSLType None
AuthMechs LOGIN
Timeout 30

IMAPStore remote
Account test

MaildirStore local
Path {local}/
Inbox {local}/INBOX
SubFolders Verbatim

Channel everything
Far :remote:
Near :local:
Patterns *
Create Both
Expunge Both
SyncState *
Sync All
"""
    )
    return rc


def _mbsync(rc: Path) -> str:
    proc = subprocess.run(
        [str(MBSYNC), "-c", str(rc), "-a", "-V"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def _local_messages(folder: Path) -> dict[str, tuple[frozenset[str], Path]]:
    """Message-ID-less key (sha256 of the body without X-TUID) -> (flags, path)."""
    out: dict[str, tuple[frozenset[str], Path]] = {}
    for sub in ("cur", "new"):
        for path in sorted((folder / sub).glob("*")):
            info = path.name.partition(":2,")[2]
            flags = frozenset(MAILDIR_FLAGS[c] for c in info if c in MAILDIR_FLAGS)
            out[_key(path.read_bytes())] = (flags, path)
    return out


def _key(data: bytes) -> str:
    lines = [line for line in data.split(b"\n") if not line.startswith(b"X-TUID: ")]
    return hashlib.sha256(b"\n".join(lines).replace(b"\r\n", b"\n")).hexdigest()


def _set_local_flags(path: Path, flags: str) -> Path:
    name = path.name.partition(":2,")[0] + ":2," + "".join(sorted(flags))
    target = path.parent.parent / "cur" / name
    path.rename(target)
    return target


async def _server_messages(env: Env, box: str) -> dict[str, frozenset[str]]:
    c = await env.client(login="alice")
    await c.ok(f'EXAMINE "{box}"')
    resp = await c.ok("FETCH 1:* (FLAGS BODY.PEEK[])") if await _count(c, box) else None
    out: dict[str, frozenset[str]] = {}
    for line in resp.untagged if resp else []:
        flags_part = line.split(b"FLAGS (", 1)[1].split(b")", 1)[0].decode()
        body = line.split(b"}\r\n", 1)[1][:-1]
        out[_key(body)] = frozenset(f for f in flags_part.split() if f.startswith("\\"))
    await c.logout()
    return out


async def _count(c: Any, box: str) -> int:
    resp = await c.ok(f'STATUS "{box}" (MESSAGES)')
    return int(resp.untagged[0].rsplit(b" ", 1)[1].rstrip(b")"))


@pytest.mark.skipif(MBSYNC is None, reason="mbsync (Debian package isync) is not installed")
async def test_mbsync_two_way_sync(env: Env, fixtures_dir: Path) -> None:
    manifest = json.loads((fixtures_dir / "dovecot-2.3" / "manifest.json").read_text())
    report = await import_dovecot(env.storage, "alice", fixtures_dir / "dovecot-2.3" / "sdbox")
    assert not report.problems
    rc = await asyncio.to_thread(_write_config, env.root, env.port)
    fixture = [m for m in manifest["users"]["sdbox"]["messages"] if m["mailbox"] == "INBOX"]
    # mbsync leaves out a message flagged \Deleted ("would be expunged anyway"; with
    # Expunge Both it expunges it on the server) and refuses fixture 18, whose header
    # has no terminating empty line ("incomplete header; skipping").
    deleted_uids = {m["uid"] for m in fixture if "\\Deleted" in m["flags"]}
    no_blank_line = {m["uid"] for m in fixture if m["fixture_id"] == "18"}
    assert len(deleted_uids) == 1 and len(no_blank_line) == 1
    server_before = await _server_messages(env, "INBOX")
    assert len(server_before) == 17
    skipped = {await _server_key(env, uid) for uid in no_blank_line}

    # 1. Everything down.
    await asyncio.to_thread(_mbsync, rc)
    local_root = env.root / "maildir"
    inbox = await asyncio.to_thread(_local_messages, local_root / "INBOX")
    archive = await asyncio.to_thread(_local_messages, local_root / "Archive" / "2024")
    assert len(inbox) == 15
    assert len(archive) == 9
    server_inbox = await _server_messages(env, "INBOX")
    assert len(server_inbox) == 16  # the \Deleted one was expunged
    assert {k: v[0] for k, v in inbox.items()} == _without(server_inbox, skipped)

    # 2. Change both sides.
    unseen_local = next(k for k, (f, _p) in inbox.items() if "\\Seen" not in f)
    seen_local = next(k for k, (f, _p) in inbox.items() if f == frozenset({"\\Seen"}))
    await asyncio.to_thread(_set_local_flags, inbox[unseen_local][1], "FS")  # +\Flagged \Seen
    await asyncio.to_thread(_set_local_flags, inbox[seen_local][1], "")  # -\Seen
    new_local = b"From: near@example.test\r\nSubject: written locally\r\n\r\nnear side\r\n"
    new_path = local_root / "INBOX" / "new" / "1700000000.local.test"
    await asyncio.to_thread(new_path.write_bytes, new_local)

    c = await env.client(login="alice")
    await c.ok("SELECT INBOX")
    resp = await c.ok("UID SEARCH UNANSWERED SEEN NOT HEADER X-Fixture-Id 18")
    answer_uid = int(resp.untagged[0].split()[2])
    await c.ok(f"UID STORE {answer_uid} +FLAGS (\\Answered)")
    new_remote = b"From: far@example.test\r\nSubject: written on the server\r\n\r\nfar side\r\n"
    await c.ok(b"APPEND INBOX (\\Flagged) {%d}\r\n" % len(new_remote) + new_remote)
    await c.logout()
    answered_key = await _server_key(env, answer_uid)

    # 3. Sync again: both sides agree.
    await asyncio.to_thread(_mbsync, rc)
    inbox = await asyncio.to_thread(_local_messages, local_root / "INBOX")
    server_inbox = await _server_messages(env, "INBOX")
    assert len(server_inbox) == 18
    assert {k: v[0] for k, v in inbox.items()} == _without(server_inbox, skipped)
    assert server_inbox[unseen_local] >= {"\\Flagged", "\\Seen"}
    assert "\\Seen" not in server_inbox[seen_local]
    assert server_inbox[_key(new_local)] == frozenset()
    assert inbox[_key(new_remote)][0] == frozenset({"\\Flagged"})
    assert "\\Answered" in inbox[answered_key][0]

    # 4. A third run changes nothing.
    await asyncio.to_thread(_mbsync, rc)
    again = await asyncio.to_thread(_local_messages, local_root / "INBOX")
    assert {k: v[0] for k, v in again.items()} == {k: v[0] for k, v in inbox.items()}
    assert await _server_messages(env, "INBOX") == server_inbox


def _without(messages: dict[str, frozenset[str]], keys: set[str]) -> dict[str, frozenset[str]]:
    return {k: v for k, v in messages.items() if k not in keys}


async def _server_key(env: Env, uid: int) -> str:
    c = await env.client(login="alice")
    await c.ok("EXAMINE INBOX")
    resp = await c.ok(f"UID FETCH {uid} BODY.PEEK[]")
    await c.logout()
    return _key(resp.untagged[0].split(b"}\r\n", 1)[1][:-1])
