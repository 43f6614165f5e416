"""Full workflows with real client libraries: ``imaplib`` and ``imapclient``.

Both are blocking: each workflow runs in a worker thread (``asyncio.to_thread``) while
the server runs on the test's loop.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import imaplib
import re
import threading
import time

import imapclient
import pytest

from tests.integration.imap.conftest import Env
from tests.integration.imap.messages import MULTIPART, simple

pytestmark = pytest.mark.asyncio


def _imaplib_workflow(port: int) -> None:
    m = imaplib.IMAP4("127.0.0.1", port)
    assert "IDLE" in m.capabilities or m.capability()[0] == "OK"
    typ, data = m.login("alice", "secret")
    assert typ == "OK"
    # create / list / status
    assert m.create("Projects/2024")[0] == "OK"
    typ, boxes = m.list()
    assert typ == "OK"
    listed = [b.decode() for b in boxes if b is not None]
    assert any(line.endswith('"Projects/2024"') for line in listed), listed
    assert any("\\Sent" in line for line in listed)
    typ, data = m.status("INBOX", "(MESSAGES UIDNEXT UNSEEN)")
    assert typ == "OK" and b"MESSAGES 0" in data[0]
    # append with flags and date
    date = imaplib.Time2Internaldate(dt.datetime(2024, 3, 1, 12, 30, 0, tzinfo=dt.UTC))
    for i in range(1, 4):
        typ, data = m.append("INBOX", "(\\Flagged)" if i == 2 else None, date, simple(i))
        assert typ == "OK" and b"APPENDUID" in data[0]
    assert m.append("INBOX", "(\\Seen)", None, MULTIPART)[0] == "OK"
    # select, fetch
    typ, data = m.select("INBOX")
    assert typ == "OK" and data == [b"4"]
    typ, data = m.fetch("1:4", "(FLAGS UID INTERNALDATE RFC822.SIZE)")
    assert typ == "OK" and len(data) == 4
    assert b"INTERNALDATE" in data[0] and b"RFC822.SIZE %d" % len(simple(1)) in data[0]
    assert b"\\Flagged" in data[1]
    typ, data = m.fetch("1", "(BODY[])")
    assert data[0][1] == simple(1)  # type: ignore[index]
    typ, data = m.fetch("2", "(BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)])")
    assert data[0][1] == b"From: Sender 2 <sender2@example.com>\r\nSubject: message 2\r\n\r\n"  # type: ignore[index]
    typ, data = m.fetch("4", "(BODY.PEEK[1]<0.10>)")
    assert data[0][1] == b"aGVsbG8Ad2"  # type: ignore[index]
    typ, data = m.fetch("4", "(BODYSTRUCTURE ENVELOPE)")
    assert b'BODYSTRUCTURE (("text" "plain"' in data[0]  # type: ignore[operator]
    assert b'ENVELOPE (NIL "multi"' in data[0]  # type: ignore[operator]
    # search, store
    typ, data = m.search(None, "UNSEEN")
    assert data == [b"2 3"]  # message 1 was fetched without PEEK
    typ, data = m.uid("SEARCH", "FLAGGED")
    assert data == [b"2"]
    typ, data = m.store("3", "+FLAGS", "(\\Deleted)")
    assert typ == "OK" and b"\\Deleted" in data[0]
    # copy, move, expunge
    typ, data = m.copy("1", "Projects/2024")
    assert typ == "OK"
    typ, data = m.uid("MOVE", "2", "Archive")
    assert typ == "OK"
    typ, data = m.expunge()
    # imaplib returns every EXPUNGE since the last call: the MOVE's, then message 3's
    # (number 2 after the MOVE).
    assert typ == "OK" and data == [b"2", b"2"]
    typ, data = m.status("Projects/2024", "(MESSAGES)")
    assert b"MESSAGES 1" in data[0]
    typ, data = m.status("Archive", "(MESSAGES)")
    assert b"MESSAGES 1" in data[0]
    assert m.close()[0] == "OK"
    assert m.logout()[0] == "BYE"


async def test_imaplib_workflow(env: Env) -> None:
    await asyncio.to_thread(_imaplib_workflow, env.port)


def _imapclient_workflow(port: int, appended: threading.Event) -> None:
    c = imapclient.IMAPClient("127.0.0.1", port=port, ssl=False, timeout=20)
    c.login("alice", "secret")
    assert c.has_capability("IDLE") and c.has_capability("MOVE")
    c.create_folder("Lists")
    folders = c.list_folders()
    names = [name for _flags, _delim, name in folders]
    assert "Lists" in names and "INBOX" in names
    sent = [f for f in folders if b"\\Sent" in f[0]]
    assert [f[2] for f in sent] == ["Sent"]
    when = dt.datetime(2023, 5, 4, 3, 2, 1, tzinfo=dt.UTC)
    uid_line = c.append("INBOX", simple(1), flags=[imapclient.SEEN, "$Work"], msg_time=when)
    assert b"APPENDUID" in uid_line
    c.append("INBOX", simple(2))
    status = c.folder_status("INBOX", ["MESSAGES", "UNSEEN"])
    assert status[b"MESSAGES"] == 2 and status[b"UNSEEN"] == 1
    info = c.select_folder("INBOX")
    assert info[b"EXISTS"] == 2 and b"$Work" in info[b"FLAGS"]
    data = c.fetch(
        [1, 2],
        ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "BODY.PEEK[HEADER.FIELDS (SUBJECT)]", "ENVELOPE"],
    )
    assert data[1][b"FLAGS"] == (b"\\Seen", b"\\Recent", b"$Work")  # first to select
    assert (
        data[1][b"INTERNALDATE"].replace(tzinfo=None) == when.replace(tzinfo=None)
        or data[1][b"INTERNALDATE"].astimezone(dt.UTC) == when
    )
    assert data[2][b"RFC822.SIZE"] == len(simple(2))
    assert data[2][b"BODY[HEADER.FIELDS (SUBJECT)]"] == b"Subject: message 2\r\n\r\n"
    assert data[2][b"ENVELOPE"].subject == b"message 2"
    assert c.search(["UNSEEN"]) == [2]
    assert c.search(["SUBJECT", "message 1"]) == [1]
    c.add_flags([2], [imapclient.FLAGGED])
    assert c.get_flags([2])[2] == (b"\\Flagged", b"\\Recent")
    c.copy([1], "Lists")
    c.move([2], "Archive")
    assert c.search() == [1]
    # IDLE: the other thread appends; the EXISTS arrives within a second.
    c.idle()
    appended.set()
    started = time.monotonic()
    responses = c.idle_check(timeout=5)
    c.idle_done()
    assert (2, b"EXISTS") in responses, responses
    assert time.monotonic() - started < 1.5
    c.delete_messages([1])
    c.expunge()
    assert c.search() == [3]  # UIDs: the message appended during IDLE
    c.unselect_folder()
    c.logout()


async def test_imapclient_workflow_with_idle(env: Env) -> None:
    appended = threading.Event()

    async def append_when_idle() -> None:
        while not appended.is_set():
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
        c = await env.client(login="alice")
        await c.ok(b"APPEND INBOX {%d}\r\n" % len(simple(9)) + simple(9))
        await c.logout()

    other = asyncio.ensure_future(append_when_idle())
    await asyncio.to_thread(_imapclient_workflow, env.port, appended)
    await other


def _imaplib_authenticate(port: int) -> None:
    m = imaplib.IMAP4("127.0.0.1", port)
    typ, _ = m.authenticate("PLAIN", lambda _challenge: b"\0bob\0hunter2")
    assert typ == "OK"
    typ, data = m.namespace()
    assert typ == "OK" and data == [b'(("" "/")) NIL NIL']
    typ, data = m.select("INBOX", readonly=True)
    assert typ == "OK"
    assert re.search(rb"READ-ONLY", m.response("READ-ONLY")[1][0] or b"READ-ONLY")
    m.logout()


async def test_imaplib_authenticate(env: Env) -> None:
    await asyncio.to_thread(_imaplib_authenticate, env.port)
