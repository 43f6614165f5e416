"""``\\Recent`` as RFC 3501 §2.3.2 and Dovecot keep it: a message is recent in the one
session that is first told about it; read-only sessions see what nobody claimed."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from aiodbox.config import StorageConfig
from aiodbox.index.schema import MIGRATIONS, migrate
from aiodbox.storage import Storage
from tests.integration.imap.client import RawClient
from tests.integration.imap.conftest import Env
from tests.integration.imap.messages import append_command, simple


def _count(resp_untagged: list[bytes], what: bytes) -> int | None:
    for line in resp_untagged:
        parts = line.split()
        if len(parts) == 3 and parts[2] == what:
            return int(parts[1])
    return None


async def _append(c: RawClient, n: int, flags: str = "") -> None:
    await c.ok(append_command("INBOX", simple(n), flags))


async def test_the_first_session_to_select_gets_the_new_messages_as_recent(env: Env) -> None:
    a = await env.client(login="alice")
    b = await env.client(login="alice")
    probe = await env.client(login="alice")
    await _append(probe, 1)
    await _append(probe, 2, "\\Seen")
    resp = await probe.ok("STATUS INBOX (MESSAGES RECENT)")
    assert resp.untagged == [b'* STATUS "INBOX" (MESSAGES 2 RECENT 2)']

    # A read-only session sees them as recent and leaves them so.
    resp = await probe.ok("EXAMINE INBOX")
    assert _count(resp.untagged, b"RECENT") == 2
    resp = await probe.ok("FETCH 1:2 FLAGS")
    assert resp.untagged == [
        b"* 1 FETCH (FLAGS (\\Recent))",
        b"* 2 FETCH (FLAGS (\\Seen \\Recent))",
    ]

    resp = await a.ok("SELECT INBOX")
    assert _count(resp.untagged, b"RECENT") == 2
    resp = await b.ok("SELECT INBOX")
    assert _count(resp.untagged, b"RECENT") == 0
    resp = await a.ok("FETCH 1:2 FLAGS")
    assert resp.untagged == [
        b"* 1 FETCH (FLAGS (\\Recent))",
        b"* 2 FETCH (FLAGS (\\Seen \\Recent))",
    ]
    resp = await b.ok("FETCH 1:2 FLAGS")
    assert resp.untagged == [b"* 1 FETCH (FLAGS ())", b"* 2 FETCH (FLAGS (\\Seen))"]
    assert (await a.ok("SEARCH RECENT")).untagged == [b"* SEARCH 1 2"]
    assert (await a.ok("SEARCH NEW")).untagged == [b"* SEARCH 1"]
    assert (await a.ok("SEARCH OLD")).untagged == [b"* SEARCH"]
    assert (await b.ok("SEARCH RECENT")).untagged == [b"* SEARCH"]
    assert (await b.ok("SEARCH OLD")).untagged == [b"* SEARCH 1 2"]
    resp = await probe.ok("STATUS INBOX (RECENT)")
    assert resp.untagged == [b'* STATUS "INBOX" (RECENT 0)']

    # A message delivered while both are selected: the first to hear of it claims it.
    await _append(probe, 3)
    resp = await b.ok("NOOP")
    assert resp.untagged == [b"* 3 EXISTS", b"* 1 RECENT"]
    resp = await a.ok("NOOP")
    assert resp.untagged == [b"* 3 EXISTS"]  # still 2 recent here: no RECENT response
    assert (await b.ok("FETCH 3 FLAGS")).untagged == [b"* 3 FETCH (FLAGS (\\Recent))"]
    assert (await a.ok("FETCH 3 FLAGS")).untagged == [b"* 3 FETCH (FLAGS ())"]

    # Selecting again starts a new claim: what this connection had is not recent any more.
    resp = await a.ok("SELECT INBOX")
    assert _count(resp.untagged, b"RECENT") == 0
    # STORE cannot set it.
    resp = await a.command("STORE 1 +FLAGS (\\Recent)")
    assert resp.status == "BAD"
    for c in (a, b, probe):
        await c.logout()


async def test_expunged_recent_messages_leave_the_count(env: Env) -> None:
    c = await env.client(login="alice")
    for i in range(1, 4):
        await _append(c, i)
    resp = await c.ok("SELECT INBOX")
    assert _count(resp.untagged, b"RECENT") == 3
    await c.ok("STORE 2 +FLAGS.SILENT (\\Deleted)")
    await c.ok("EXPUNGE")
    other = await env.client(login="alice")
    await _append(other, 4)
    resp = await c.ok("NOOP")
    assert resp.untagged == [b"* 3 EXISTS"]  # 1, 3 and 4: still three recent
    assert (await c.ok("SEARCH RECENT")).untagged == [b"* SEARCH 1 2 3"]
    await other.logout()
    await c.logout()


async def test_of_two_processes_claiming_at_once_one_gets_the_messages(
    tmp_path: Path,
) -> None:
    cfg = StorageConfig(
        format="sdbox", mail_root=tmp_path / "mail", index_root=tmp_path / "index", fs="posix"
    )
    first, second = Storage(cfg), Storage(cfg)  # two processes' storages on one index
    users = [await first.user("u"), await second.user("u")]
    boxes = [await u.open_mailbox("INBOX") for u in users]
    for n in range(5):
        await boxes[0].save(simple(n))
    await boxes[1].sync()
    assert boxes[1].view.uidnext == 6
    claims = await asyncio.gather(*(b.claim_recent() for b in boxes))
    assert sorted(claims, key=str) == sorted([(1, 6), None], key=str)
    assert await boxes[0].claim_recent() is None
    for b in boxes:
        await b.close()
    for u in users:
        await u.close()


def test_an_index_of_schema_1_has_nothing_recent_after_the_upgrade(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "index.sqlite", isolation_level=None)
    for statement in MIGRATIONS[0].split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', '1')")
    conn.execute(
        "INSERT INTO mailboxes (name, guid, uidvalidity, uidnext, created)"
        " VALUES ('INBOX', 'g', 1, 42, 0)"
    )
    assert migrate(conn) == 1
    assert conn.execute("SELECT first_recent_uid FROM mailboxes").fetchone() == (42,)
    conn.close()


async def test_a_claim_still_running_when_idle_ends_is_announced_by_the_next_command(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    # IDLE claims new messages before it announces them.  When DONE arrives while the
    # claim is still running, EXISTS goes out without them counted as recent; once the
    # claim is done, the next command tells the client the new RECENT count.
    from aiodbox.storage.mailbox import Mailbox

    c = await env.client(login="alice")
    other = await env.client(login="alice")
    await c.ok("SELECT INBOX")
    gate = asyncio.Event()
    claiming = asyncio.Event()
    real_claim = Mailbox.claim_recent

    async def slow_claim(self: Mailbox) -> Any:
        claiming.set()
        await gate.wait()
        return await real_claim(self)

    monkeypatch.setattr(Mailbox, "claim_recent", slow_claim)
    await c.send_raw(b"i1 IDLE\r\n")
    assert (await c.read_response_line()).startswith(b"+")
    await _append(other, 1)
    await asyncio.wait_for(claiming.wait(), 5)  # IDLE noticed the message, is claiming
    await c.send_raw(b"DONE\r\n")
    resp = await c.read_until("i1")
    assert resp.tagged.startswith(b"i1 OK")
    assert b"* 1 EXISTS" in resp.untagged
    assert _count(resp.untagged, b"RECENT") in (None, 0)
    gate.set()
    await asyncio.sleep(0.1)  # the claim finishes
    resp = await c.ok("NOOP")
    assert resp.untagged == [b"* 1 RECENT"]
    assert (await c.ok("FETCH 1 (FLAGS)")).untagged == [b"* 1 FETCH (FLAGS (\\Recent))"]
    await other.logout()
    await c.logout()
