"""``aiodbox import dovecot``: both real Dovecot 2.3 fixture users, into sdbox and mdbox.

Every manifest field the storage holds is checked after the import: per message the UID,
GUID, flags, keywords, INTERNALDATE, size and the sha256 of the streamed IMAP bytes; per
mailbox the GUID, UIDVALIDITY, UIDNEXT and HIGHESTMODSEQ; the mailbox list and the
subscriptions.  The CLI runs in a worker thread (it starts its own event loop); the
storage is then read on the test's loop, whose 50 ms slow-callback guard catches
blocking I/O.  One test calls the importer directly on that loop for the same reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import gc
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

# Everything the CLI imports is loaded here, before the per-test ``gc.freeze()``: the
# objects of a module first imported by the CLI thread during a test would otherwise be
# swept by a full GC pass that may land on (and be blamed on) a loop callback.
import aiodbox.auth.passwd_file
import aiodbox.auth.schemes
import aiodbox.cli.export
import aiodbox.cli.importer
import aiodbox.cli.user
import aiodbox.importers.maildir_mbox  # noqa: F401
from aiodbox.cli.main import build_parser, main
from aiodbox.config import Config, load_config
from aiodbox.importers.dovecot_import import import_dovecot
from aiodbox.importers.target import ImportConflict
from aiodbox.storage import Storage
from aiodbox.storage.mailbox import bits_to_flags
from aiodbox.storage.names import DEFAULT_MAILBOXES

build_parser()
with contextlib.suppress(ImportError):
    import uvloop  # noqa: F401  (the CLI's event loop)

USERS = ("sdbox", "mdbox")
FORMATS = ("sdbox", "mdbox")
DEAD_MDBOX_GUID = "c8df2622be91096b5d55000083ecc375"


def write_config(tmp_path: Path, fmt: str) -> Path:
    """A config with everything under ``tmp_path`` (posix FS)."""
    path = tmp_path / "aiodbox.toml"
    path.write_text(
        f'[storage]\nformat = "{fmt}"\nmail_root = "mail"\nindex_root = "index"\n'
        'fs = "posix"\nfsync = "never"\n[auth]\npasswd_file = "users"\n'
    )
    return path


def _main_then_collect(argv: list[str]) -> int:
    try:
        return main(argv)
    finally:
        gc.collect()  # the CLI's cyclic garbage is swept in its thread, not on our loop


async def cli(config: Path, *args: str) -> int:
    """Run ``aiodbox --config CONFIG ARGS`` in a worker thread (it runs its own loop)."""
    return await asyncio.to_thread(_main_then_collect, ["--config", str(config), *args])


def unix(text: str) -> int:
    stamp = datetime.datetime.strptime(text, "%Y-%m-%d %H:%M:%S")
    return int(stamp.replace(tzinfo=datetime.UTC).timestamp())


def imap_unix(text: str) -> int:
    return int(datetime.datetime.strptime(text, "%d-%b-%Y %H:%M:%S %z").timestamp())


@pytest.fixture(scope="module")
def manifest(fixtures_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((fixtures_dir / "dovecot-2.3" / "manifest.json").read_text())
    return data


def home(fixtures_dir: Path, user: str) -> Path:
    return fixtures_dir / "dovecot-2.3" / user


@pytest.fixture
async def opened() -> AsyncIterator[list[Storage]]:
    """Storages opened by a test, closed at its end."""
    storages: list[Storage] = []
    yield storages
    for storage in storages:
        await storage.close()


def open_storage(config: Config, registry: list[Storage]) -> Storage:
    storage = Storage(config.storage)
    registry.append(storage)
    return storage


async def body_sha256(mbox: Any, rec: Any) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    msg = await mbox.open_message(rec)
    try:
        async for chunk in msg.open_body():
            digest.update(chunk)
            size += len(chunk)
    finally:
        await msg.aclose()
    return digest.hexdigest(), size


async def check_user_against_manifest(
    storage: Storage, user_name: str, expected: dict[str, Any]
) -> None:
    """Every manifest field the storage holds, for one imported fixture user."""
    user = await storage.user(user_name, create=False)
    boxes = {m.name: m for m in await user.list_mailboxes()}
    dovecot_names = {m["mailbox"] for m in expected["mailboxes"]}
    defaults = {name for name, _ in DEFAULT_MAILBOXES}
    assert set(boxes) == dovecot_names | defaults
    assert boxes["Sent"].special_use == "\\Sent"  # the new user's defaults are kept
    assert "Archive/2024" in await user.subscriptions()

    for mb in expected["mailboxes"]:
        info = boxes[mb["mailbox"]]
        status = await user.status(mb["mailbox"])
        assert info.guid == mb["guid"]
        assert info.uidvalidity == mb["uidvalidity"]
        assert status.uidnext == mb["uidnext"]
        assert status.highestmodseq >= mb["highestmodseq"]
        assert status.messages == mb["messages"]
        assert status.size == mb["vsize"]

        wanted = sorted(
            (m for m in expected["messages"] if m["mailbox"] == mb["mailbox"]),
            key=lambda m: m["uid"],
        )
        mbox = await user.open_mailbox(mb["mailbox"])
        try:
            assert list(mbox.view.uids) == [m["uid"] for m in wanted]
            records = await mbox.records([m["uid"] for m in wanted])
            for rec, m in zip(records, wanted, strict=True):
                where = f"{mb['mailbox']} UID {m['uid']}"
                assert rec.uid == m["uid"], where
                assert rec.guid == m["guid"], where
                assert set(bits_to_flags(rec.flags)) == set(m["flags"]), where
                assert set(rec.keywords) == set(m["keywords"]), where
                assert rec.internal_date == unix(m["date_received"]), where
                assert rec.internal_date == imap_unix(m["internaldate"]), where
                assert rec.size == m["imap_size"] == m["size_virtual"], where
                sha, size = await body_sha256(mbox, rec)
                assert (sha, size) == (m["imap_sha256"], m["imap_size"]), where
        finally:
            await mbox.close()
    if "mdbox" in expected.get("mail_location", ""):
        for dead in expected["dead_messages_not_purged"]:
            for name in boxes:
                mbox = await user.open_mailbox(name)
                try:
                    recs = await mbox.records(list(mbox.view.uids))
                finally:
                    await mbox.close()
                assert dead["guid"] not in {r.guid for r in recs}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("source", USERS)
async def test_cli_import_keeps_every_manifest_field(
    tmp_path: Path,
    fixtures_dir: Path,
    manifest: dict[str, Any],
    opened: list[Storage],
    source: str,
    fmt: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config_path = write_config(tmp_path, fmt)
    assert await cli(config_path, "user", "add", "alice", "--password", "pw") == 0
    # The mail root itself; the other user's via its home directory (also accepted).
    path = home(fixtures_dir, source) / source if source == "sdbox" else home(fixtures_dir, source)
    assert await cli(config_path, "import", "dovecot", str(path), "--user", "alice") == 0
    out, err = capsys.readouterr()
    assert "imported 26 message(s) into 2 mailbox(es)" in out
    assert "INBOX: 17 (adopted" in out and "Archive/2024: 9 (created" in out
    assert "problem" not in err and "Traceback" not in err

    storage = open_storage(load_config(config_path), opened)
    expected = manifest["users"][source]
    await check_user_against_manifest(storage, "alice", expected)
    inbox = await (await storage.user("alice")).open_mailbox("INBOX")
    try:
        uids = list(inbox.view.uids)
        assert 12 not in uids and uids[10:12] == [11, 13]  # the expunged UID stays a gap
    finally:
        await inbox.close()


async def test_reimport_resumes_and_adds_nothing(
    tmp_path: Path,
    fixtures_dir: Path,
    manifest: dict[str, Any],
    opened: list[Storage],
    capsys: pytest.CaptureFixture[str],
) -> None:
    config_path = write_config(tmp_path, "mdbox")
    path = str(home(fixtures_dir, "mdbox") / "mdbox")
    assert await cli(config_path, "import", "dovecot", path, "--user", "bob") == 0
    assert await cli(config_path, "import", "dovecot", path, "--user", "bob") == 0
    out, err = capsys.readouterr()
    assert "INBOX: 0 (resumed, UIDVALIDITY 1795789247, 17 already there)" in out
    assert "is not in" in err  # bob was never added to the passwd-file: a warning only
    storage = open_storage(load_config(config_path), opened)
    await check_user_against_manifest(storage, "bob", manifest["users"]["mdbox"])


class _Interrupted(Exception):
    pass


class _StopAfterFirstBatch:
    def __init__(self) -> None:
        self.steps = 0

    def __call__(self, label: str, total: int) -> _StopAfterFirstBatch:
        return self

    def step(self, n: int = 1) -> None:
        self.steps += n
        raise _Interrupted

    def close(self) -> None:
        pass


@pytest.mark.parametrize("fmt", FORMATS)
async def test_direct_import_interrupted_then_resumed(
    tmp_path: Path,
    fixtures_dir: Path,
    manifest: dict[str, Any],
    opened: list[Storage],
    fmt: str,
) -> None:
    """The importer on the test's loop (the slow-callback guard watches it), killed after
    its first committed batch, then run again: every message exactly once, UIDs kept."""
    config = load_config(write_config(tmp_path, fmt))
    storage = open_storage(config, opened)
    path = home(fixtures_dir, "sdbox") / "sdbox"
    stopper = _StopAfterFirstBatch()
    with pytest.raises(_Interrupted):
        await import_dovecot(storage, "carol", path, batch=5, progress=stopper)
    assert stopper.steps == 5
    user = await storage.user("carol")
    assert (await user.status("INBOX")).messages == 5
    report = await import_dovecot(storage, "carol", path, batch=5, prefetch=3)
    assert report.problems == []
    inbox = next(m for m in report.mailboxes if m.name == "INBOX")
    assert (inbox.mode, inbox.imported, inbox.skipped) == ("resumed", 12, 5)
    await check_user_against_manifest(storage, "carol", manifest["users"]["sdbox"])


async def test_mailbox_with_other_mail_is_refused_and_nothing_written(
    tmp_path: Path, fixtures_dir: Path, opened: list[Storage], capsys: pytest.CaptureFixture[str]
) -> None:
    config_path = write_config(tmp_path, "sdbox")
    storage = open_storage(load_config(config_path), opened)
    user = await storage.user("dave")
    inbox = await user.open_mailbox("INBOX")
    await inbox.save(b"Subject: mine\r\n\r\nhello\r\n")
    await inbox.close()
    await storage.close()
    opened.clear()

    code = await cli(
        config_path, "import", "dovecot", str(home(fixtures_dir, "mdbox")), "--user", "dave"
    )
    _, err = capsys.readouterr()
    assert code == 1
    assert "refusing to merge" in err and "'INBOX' holds 1 message(s)" in err
    assert "Traceback" not in err

    storage = open_storage(load_config(config_path), opened)
    user = await storage.user("dave")
    assert "Archive/2024" not in {m.name for m in await user.list_mailboxes()}
    assert (await user.status("INBOX")).messages == 1

    with pytest.raises(ImportConflict):
        await import_dovecot(storage, "dave", home(fixtures_dir, "sdbox") / "sdbox")


def _run_cli_process(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src"))
    return subprocess.run(
        [sys.executable, "-m", "aiodbox.cli.main", "--config", str(config), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("make_path", "reason"),
    [
        (lambda tmp: tmp / "missing", "no such file or directory"),
        (lambda tmp: tmp / "aiodbox.toml", "not a directory"),
        (lambda tmp: tmp / "empty", "not a Dovecot sdbox/mdbox mail root"),
    ],
    ids=["missing", "file", "empty-dir"],
)
def test_bad_path_exits_2_with_one_line(tmp_path: Path, make_path: Any, reason: str) -> None:
    config = write_config(tmp_path, "mdbox")
    (tmp_path / "empty").mkdir()
    bad = make_path(tmp_path)
    proc = _run_cli_process(config, "import", "dovecot", str(bad), "--user", "erin")
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("aiodbox: ") and reason in lines[0]
    assert proc.stdout == ""
    assert not (tmp_path / "index").exists() and not (tmp_path / "mail").exists()


def test_bad_path_suggests_the_mail_root(tmp_path: Path, fixtures_dir: Path) -> None:
    """A directory above a home directory: the message says where to look."""
    config = write_config(tmp_path, "mdbox")
    proc = _run_cli_process(
        config, "import", "dovecot", str(fixtures_dir / "dovecot-2.3"), "--user", "erin"
    )
    assert proc.returncode == 2
    assert len(proc.stderr.splitlines()) == 1
    assert "not a Dovecot sdbox/mdbox mail root" in proc.stderr
    assert "mail roots below it:" in proc.stderr and "mdbox/mdbox" in proc.stderr


async def test_missing_and_damaged_messages_are_reported_and_the_rest_imported(
    tmp_path: Path,
    fixtures_dir: Path,
    manifest: dict[str, Any],
    opened: list[Storage],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A copy of the sdbox fixture (in tmp_path) with u.5 deleted and u.9 truncated."""
    source = tmp_path / "sdbox"
    await asyncio.to_thread(
        shutil.copytree, home(fixtures_dir, "sdbox") / "sdbox", source, symlinks=True
    )
    inbox_dir = source / "mailboxes" / "INBOX" / "dbox-Mails"
    (inbox_dir / "u.5").unlink()
    with open(inbox_dir / "u.9", "r+b") as f:
        f.truncate(1000)
    config_path = write_config(tmp_path, "mdbox")
    assert await cli(config_path, "import", "dovecot", str(source), "--user", "gus") == 1
    out, err = capsys.readouterr()
    assert "imported 24 message(s) into 2 mailbox(es)" in out
    assert "INBOX: 15 (adopted, UIDVALIDITY 1795789247, 2 failed)" in out
    problems = [line for line in err.splitlines() if line.startswith("aiodbox: problem: ")]
    assert len(problems) == 2
    assert "INBOX UID 5: not imported: its u.N file is missing" in problems[0]
    assert "INBOX UID 9: not imported:" in problems[1]
    storage = open_storage(load_config(config_path), opened)
    user = await storage.user("gus", create=False)
    status = await user.status("INBOX")
    assert (status.messages, status.uidnext) == (15, 19)


def test_a_maildir_is_named_as_such(tmp_path: Path) -> None:
    config = write_config(tmp_path, "sdbox")
    for sub in ("cur", "new", "tmp"):
        (tmp_path / "Maildir" / sub).mkdir(parents=True)
    proc = _run_cli_process(config, "import", "dovecot", str(tmp_path / "Maildir"), "--user", "hal")
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"aiodbox: {tmp_path / 'Maildir'}: is a Maildir, not an sdbox/mdbox mail root: "
        "use 'import maildir'"
    ]
