"""Transcript tests: every command over a raw socket, responses compared structurally.

Expected texts and orders follow Dovecot 2.3 (checked against ``/usr/lib/dovecot/imap``
in PREAUTH mode where the RFCs leave room).  Each test runs over sdbox and mdbox.
"""

from __future__ import annotations

import base64
import errno
import re
from typing import Any

import pytest

from tests.integration.imap.client import RawClient
from tests.integration.imap.conftest import Env
from tests.integration.imap.messages import MULTIPART, append_command, simple

pytestmark = pytest.mark.asyncio


async def _with_messages(env: Env, n: int, *, user: str = "alice") -> RawClient:
    c = await env.client(login=user)
    for i in range(1, n + 1):
        await c.ok(append_command("INBOX", simple(i)))
    await c.ok("SELECT INBOX")
    return c


def _caps(line: bytes) -> set[str]:
    m = re.search(rb"CAPABILITY ([^\]\r\n]*)", line)
    assert m is not None, line
    return set(m.group(1).decode().split())


# ---------------------------------------------------------------------- any state


async def test_greeting_and_capability_before_login(env: Env) -> None:
    c = await env.client()
    assert c.greeting.startswith(b"* OK [CAPABILITY IMAP4rev1 ")
    caps = _caps(c.greeting)
    assert {"SASL-IR", "LITERAL+", "ID", "ENABLE", "IDLE", "AUTH=PLAIN", "AUTH=LOGIN"} <= caps
    assert "LOGINDISABLED" not in caps  # allow_plaintext in the test config
    assert "STARTTLS" not in caps  # no [tls] configured
    resp = await c.ok("CAPABILITY")
    assert _caps(resp.untagged[0]) == caps
    await c.logout()


async def test_capability_after_login(env: Env) -> None:
    c = await env.client()
    resp = await c.ok("LOGIN alice secret")
    caps = _caps(resp.tagged)
    expected = {
        "IMAP4rev1",
        "IDLE",
        "UIDPLUS",
        "MOVE",
        "LITERAL+",
        "NAMESPACE",
        "ID",
        "ENABLE",
        "UNSELECT",
        "CHILDREN",
        "LIST-EXTENDED",
        "SPECIAL-USE",
        "CONDSTORE",
        "QRESYNC",
        "ESEARCH",
        "SASL-IR",
        "MULTIAPPEND",
    }
    assert expected <= caps
    assert f"APPENDLIMIT={env.config.imap.max_literal_size}" in caps
    assert not any(c.startswith("AUTH=") for c in caps)
    resp = await c.ok("CAPABILITY")
    assert _caps(resp.untagged[0]) == caps
    await c.logout()


async def test_noop_logout(env: Env) -> None:
    c = await env.client()
    resp = await c.ok("NOOP")
    assert resp.untagged == []
    resp = await c.command("LOGOUT")
    assert resp.untagged == [b"* BYE Logging out"]
    assert resp.status == "OK"
    assert await c.reader.read() == b""  # the server closed the connection
    await c.close()


async def test_id_namespace_enable(env: Env) -> None:
    c = await env.client()
    resp = await c.ok('ID ("name" "test" "version" "1")')
    assert resp.untagged[0].startswith(b'* ID ("name" "aiodbox" "version" ')
    await c.ok("LOGIN alice secret")
    resp = await c.ok("NAMESPACE")
    assert resp.untagged == [b'* NAMESPACE (("" "/")) NIL NIL']
    resp = await c.ok("ENABLE CONDSTORE X-UNKNOWN")
    assert resp.untagged == [b"* ENABLED CONDSTORE"]
    resp = await c.ok("ENABLE CONDSTORE")
    assert resp.untagged == [b"* ENABLED"]
    await c.ok("SELECT INBOX")
    resp = await c.command("ENABLE QRESYNC")
    assert resp.status == "BAD"  # only before a mailbox is selected (RFC 5161)
    await c.logout()


# ---------------------------------------------------------------------- login


async def test_login_failure_then_success(env: Env) -> None:
    c = await env.client()
    resp = await c.command("LOGIN alice wrong")
    assert resp.tagged.endswith(b"NO [AUTHENTICATIONFAILED] Authentication failed.")
    resp = await c.command("LOGIN nobody secret")
    assert resp.status == "NO"
    resp = await c.command("SELECT INBOX")
    assert resp.status == "BAD"  # not logged in
    await c.ok('LOGIN "alice" {6}\r\nsecret')
    resp = await c.command("LOGIN alice secret")
    assert resp.status == "BAD"  # already logged in
    await c.logout()


async def test_authenticate_plain_with_initial_response(env: Env) -> None:
    c = await env.client()
    ir = base64.b64encode(b"\0alice\0secret").decode()
    resp = await c.ok(f"AUTHENTICATE PLAIN {ir}")
    assert b"[CAPABILITY IMAP4rev1" in resp.tagged
    await c.ok("SELECT INBOX")
    await c.logout()


async def test_authenticate_plain_and_login_with_challenges(env: Env) -> None:
    c = await env.client()
    await c.send_raw(b"a1 AUTHENTICATE PLAIN\r\n")
    assert await c.read_response_line() == b"+ "
    await c.send_raw(base64.b64encode(b"alice\0alice\0secret") + b"\r\n")
    resp = await c.read_until("a1")
    assert resp.status == "OK"
    await c.close()

    c = await env.client()
    await c.send_raw(b"a2 AUTHENTICATE LOGIN\r\n")
    assert await c.read_response_line() == b"+ " + base64.b64encode(b"Username:")
    await c.send_raw(base64.b64encode(b"bob") + b"\r\n")
    assert await c.read_response_line() == b"+ " + base64.b64encode(b"Password:")
    await c.send_raw(base64.b64encode(b"hunter2") + b"\r\n")
    resp = await c.read_until("a2")
    assert resp.status == "OK"
    await c.logout()


async def test_authenticate_errors(env: Env) -> None:
    c = await env.client()
    resp = await c.command("AUTHENTICATE CRAM-MD5")
    assert resp.tagged.endswith(b"NO Unsupported authentication mechanism.")
    await c.send_raw(b"a1 AUTHENTICATE PLAIN\r\n")
    assert await c.read_response_line() == b"+ "
    await c.send_raw(b"*\r\n")
    resp = await c.read_until("a1")
    assert resp.status == "BAD"
    ir = base64.b64encode(b"\0alice\0nope").decode()
    resp = await c.command(f"AUTHENTICATE PLAIN {ir}")
    assert resp.tagged.endswith(b"NO [AUTHENTICATIONFAILED] Authentication failed.")
    resp = await c.command("AUTHENTICATE PLAIN not-base64!")
    assert resp.status == "BAD"
    await c.ok("NOOP")
    await c.close()


# ---------------------------------------------------------------------- mailboxes


async def test_list_default_mailboxes(env: Env) -> None:
    c = await env.client(login="alice")
    resp = await c.ok('LIST "" "*"')
    assert resp.untagged == [
        b'* LIST (\\HasNoChildren) "/" "INBOX"',
        b'* LIST (\\HasNoChildren \\Archive) "/" "Archive"',
        b'* LIST (\\HasNoChildren \\Drafts) "/" "Drafts"',
        b'* LIST (\\HasNoChildren \\Junk) "/" "Junk"',
        b'* LIST (\\HasNoChildren \\Sent) "/" "Sent"',
        b'* LIST (\\HasNoChildren \\Trash) "/" "Trash"',
    ]
    resp = await c.ok('LIST "" ""')
    assert resp.untagged == [b'* LIST (\\Noselect) "/" ""']
    resp = await c.ok('LSUB "" "*"')
    names = [line.rsplit(b" ", 1)[1] for line in resp.untagged]
    assert b'"INBOX"' in names and b'"Sent"' in names
    assert b'* LSUB (\\Sent) "/" "Sent"' in resp.untagged
    await c.logout()


async def test_create_hierarchy_list_patterns(env: Env) -> None:
    c = await env.client(login="alice")
    await c.ok("CREATE work/2024/")  # a trailing separator is dropped
    await c.ok("CREATE work/2025")
    await c.ok('CREATE "caf&AOk-"')
    resp = await c.command("CREATE work/2024")
    assert resp.tagged.endswith(b"NO [ALREADYEXISTS] Mailbox already exists")
    resp = await c.ok('LIST "" "work/%"')
    assert resp.untagged == [
        b'* LIST (\\HasNoChildren) "/" "work/2024"',
        b'* LIST (\\HasNoChildren) "/" "work/2025"',
    ]
    resp = await c.ok('LIST "" "%"')
    assert b'* LIST (\\Noselect \\HasChildren) "/" "work"' in resp.untagged
    assert b'* LIST (\\HasNoChildren) "/" "caf&AOk-"' in resp.untagged
    resp = await c.ok('LIST "work/" "%"')
    assert len(resp.untagged) == 2
    resp = await c.ok('LIST "" "inbox"')
    assert resp.untagged == [b'* LIST (\\HasNoChildren) "/" "INBOX"']
    await c.logout()


async def test_list_extended(env: Env) -> None:
    c = await env.client(login="alice")
    await c.ok("CREATE a/b")
    await c.ok("SUBSCRIBE a/b")
    await c.ok("SUBSCRIBE gone")
    resp = await c.ok('LIST (SUBSCRIBED) "" "*"')
    assert b'* LIST (\\HasNoChildren \\Subscribed) "/" "a/b"' in resp.untagged
    assert b'* LIST (\\NonExistent \\HasNoChildren \\Subscribed) "/" "gone"' in resp.untagged
    resp = await c.ok('LIST (SUBSCRIBED RECURSIVEMATCH) "" "%"')
    assert (
        b'* LIST (\\Noselect \\HasChildren) "/" "a" ("CHILDINFO" ("SUBSCRIBED"))' in resp.untagged
    )
    resp = await c.ok('LIST (SPECIAL-USE) "" "*"')
    assert [line.rsplit(b" ", 1)[1] for line in resp.untagged] == [
        b'"Archive"',
        b'"Drafts"',
        b'"Junk"',
        b'"Sent"',
        b'"Trash"',
    ]
    resp = await c.ok('LIST "" ("INBOX" "Sent") RETURN (SUBSCRIBED STATUS (MESSAGES UIDNEXT))')
    assert resp.untagged == [
        b'* LIST (\\HasNoChildren \\Subscribed) "/" "INBOX"',
        b'* STATUS "INBOX" (MESSAGES 0 UIDNEXT 1)',
        b'* LIST (\\HasNoChildren \\Subscribed \\Sent) "/" "Sent"',
        b'* STATUS "Sent" (MESSAGES 0 UIDNEXT 1)',
    ]
    await c.ok("CREATE Special (USE (\\Flagged))")
    resp = await c.ok('LIST "" Special')
    assert resp.untagged == [b'* LIST (\\HasNoChildren \\Flagged) "/" "Special"']
    resp = await c.command("CREATE Other (USE (\\Bogus))")
    assert resp.status == "NO" and b"[USEATTR]" in resp.tagged
    await c.logout()


async def test_delete_rename_subscribe(env: Env) -> None:
    c = await env.client(login="alice")
    await c.ok("CREATE a/b")
    await c.ok("SUBSCRIBE a/b")
    resp = await c.command("DELETE INBOX")
    assert resp.status == "NO"
    resp = await c.command("DELETE nope")
    assert resp.tagged.endswith(b"NO [NONEXISTENT] Mailbox doesn't exist: nope")
    resp = await c.command("RENAME a/b Trash")
    assert resp.tagged.endswith(b"NO [ALREADYEXISTS] Target mailbox already exists")
    resp = await c.command("RENAME a x")  # "a" only exists as a parent: not a mailbox
    assert resp.tagged.endswith(b"NO [NONEXISTENT] Mailbox doesn't exist: a")
    resp = await c.ok('LSUB "" "*"')
    assert b'* LSUB () "/" "a/b"' in resp.untagged
    await c.ok("RENAME a/b c/d")
    resp = await c.ok('LSUB "" "c/*"')
    assert resp.untagged == [b'* LSUB () "/" "c/d"']
    await c.ok("UNSUBSCRIBE c/d")
    resp = await c.ok('LSUB "" "c/*"')
    assert resp.untagged == []
    await c.ok("DELETE c/d")
    resp = await c.ok('LIST "" "c*"')
    assert resp.untagged == []
    await c.logout()


async def test_rename_inbox_moves_messages(env: Env) -> None:
    c = await _with_messages(env, 2)
    await c.ok("UNSELECT")
    await c.ok("RENAME INBOX old-inbox")
    resp = await c.ok("STATUS INBOX (MESSAGES)")
    assert resp.untagged == [b'* STATUS "INBOX" (MESSAGES 0)']
    resp = await c.ok("STATUS old-inbox (MESSAGES)")
    assert resp.untagged == [b'* STATUS "old-inbox" (MESSAGES 2)']
    await c.logout()


async def test_status(env: Env) -> None:
    c = await env.client(login="alice")
    await c.ok(append_command("INBOX", simple(1), "\\Seen"))
    await c.ok(append_command("INBOX", simple(2)))
    resp = await c.ok("STATUS INBOX (MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN SIZE)")
    m = re.fullmatch(
        rb'\* STATUS "INBOX" \(MESSAGES 2 RECENT 2 UIDNEXT 3 UIDVALIDITY (\d+) '
        rb"UNSEEN 1 SIZE (\d+)\)",
        resp.untagged[0],
    )
    assert m is not None, resp.untagged
    assert int(m.group(2)) == len(simple(1)) + len(simple(2))
    resp = await c.command("STATUS nope (MESSAGES)")
    assert resp.tagged.endswith(b"NO [NONEXISTENT] Mailbox doesn't exist: nope")
    resp = await c.ok("STATUS INBOX (HIGHESTMODSEQ)")
    assert re.fullmatch(rb'\* STATUS "INBOX" \(HIGHESTMODSEQ \d+\)', resp.untagged[0])
    await c.logout()


# ---------------------------------------------------------------------- select


async def test_select_examine_close_unselect(env: Env) -> None:
    c = await env.client(login="alice")
    await c.ok(append_command("INBOX", simple(1), "\\Seen $Label1"))
    await c.ok(append_command("INBOX", simple(2)))
    resp = await c.ok("SELECT INBOX")
    assert resp.untagged[:5] == [
        b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Label1)",
        b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Label1 \\*)] "
        b"Flags permitted.",
        b"* 2 EXISTS",
        b"* 2 RECENT",  # appended while nobody had INBOX selected: recent here
        b"* OK [UNSEEN 2] First unseen.",
    ]
    assert re.fullmatch(rb"\* OK \[UIDVALIDITY \d+\] UIDs valid", resp.untagged[5])
    assert resp.untagged[6] == b"* OK [UIDNEXT 3] Predicted next UID"
    assert resp.tagged.endswith(b"OK [READ-WRITE] Select completed.")
    await c.ok("STORE 1 +FLAGS (\\Deleted)")
    resp = await c.ok("EXAMINE INBOX")
    assert resp.untagged[0] == b"* OK [CLOSED] Previous mailbox closed."
    assert b"* OK [PERMANENTFLAGS ()] Read-only mailbox." in resp.untagged
    assert resp.tagged.endswith(b"OK [READ-ONLY] Examine completed.")
    resp = await c.ok("STORE 1 +FLAGS (\\Flagged)")
    assert resp.tagged.endswith(b"OK Store ignored with read-only mailbox.")
    resp = await c.ok("EXPUNGE")  # ignored in a read-only mailbox
    assert resp.untagged == []
    await c.ok("UNSELECT")  # no expunge
    resp = await c.command("FETCH 1 FLAGS")
    assert resp.tagged.endswith(b"BAD No mailbox selected.")
    await c.ok("SELECT INBOX")
    resp = await c.ok("CLOSE")  # expunges silently
    assert resp.untagged == []
    resp = await c.ok("STATUS INBOX (MESSAGES)")
    assert resp.untagged == [b'* STATUS "INBOX" (MESSAGES 1)']
    resp = await c.command("SELECT nope")
    assert resp.tagged.endswith(b"NO [NONEXISTENT] Mailbox doesn't exist: nope")
    resp = await c.command("CHECK")
    assert resp.status == "BAD"  # a failed SELECT leaves no mailbox selected
    await c.ok("SELECT INBOX")
    await c.ok("CHECK")
    await c.logout()


async def test_select_condstore_and_qresync(env: Env) -> None:
    c = await env.client(login="alice")
    for i in range(1, 5):
        await c.ok(append_command("INBOX", simple(i)))
    resp = await c.ok("SELECT INBOX (CONDSTORE)")
    line = resp.lines(b"* OK [HIGHESTMODSEQ")
    assert line, resp.untagged
    uidvalidity = re.search(rb"UIDVALIDITY (\d+)", b" ".join(resp.untagged))
    assert uidvalidity is not None
    modseq = int(re.search(rb"HIGHESTMODSEQ (\d+)", line[0]).group(1))  # type: ignore[union-attr]
    await c.ok("STORE 2 +FLAGS (\\Flagged)")
    await c.ok("STORE 3 +FLAGS (\\Deleted)")
    await c.ok("EXPUNGE")
    await c.close()

    c = await env.client(login="alice")
    await c.ok("ENABLE QRESYNC")
    resp = await c.ok(f"SELECT INBOX (QRESYNC ({uidvalidity.group(1).decode()} {modseq}))")
    assert b"* VANISHED (EARLIER) 3" in resp.untagged
    fetches = resp.lines(b"* ")
    assert any(
        re.fullmatch(rb"\* 2 FETCH \(UID 2 FLAGS \(\\Flagged\) MODSEQ \(\d+\)\)", f)
        for f in fetches
    )
    # With QRESYNC an expunge is reported as VANISHED.
    await c.ok("STORE 1 +FLAGS (\\Deleted)")
    resp = await c.ok("EXPUNGE")
    assert resp.untagged == [b"* VANISHED 1"]
    resp = await c.ok("UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)")
    assert resp.untagged[0] == b"* VANISHED (EARLIER) 1,3"
    await c.logout()


# ---------------------------------------------------------------------- append


async def test_append_flags_date_and_appenduid(env: Env) -> None:
    c = await env.client(login="alice")
    date = "17-Jul-1996 02:44:25 -0700"
    resp = await c.ok(append_command("INBOX", simple(1), "\\Seen \\Draft $Custom", date))
    m = re.search(rb"\[APPENDUID (\d+) 1\] Append completed\.", resp.tagged)
    assert m is not None
    await c.ok("SELECT INBOX")
    resp = await c.ok("FETCH 1 (FLAGS INTERNALDATE RFC822.SIZE)")
    assert resp.untagged == [
        b"* 1 FETCH (FLAGS (\\Seen \\Draft \\Recent $Custom) "
        b'INTERNALDATE "17-Jul-1996 02:44:25 -0700" RFC822.SIZE %d)' % len(simple(1))
    ]
    resp = await c.command(append_command("nope", simple(2)))
    assert resp.tagged.endswith(b"NO [TRYCREATE] Mailbox doesn't exist: nope")
    resp = await c.command(append_command("INBOX", simple(2), "\\Recent"))
    assert resp.status == "BAD"
    await c.ok("NOOP")
    await c.logout()


async def test_multiappend_and_literal_plus(env: Env) -> None:
    c = await env.client(login="alice")
    m1, m2, m3 = simple(1), simple(2), simple(3)
    await c.send_raw(
        b"a1 APPEND INBOX (\\Flagged) {%d+}\r\n%s {%d+}\r\n%s (\\Seen) {%d+}\r\n%s\r\n"
        % (len(m1), m1, len(m2), m2, len(m3), m3)
    )
    resp = await c.read_until("a1")
    assert resp.tagged.endswith(b" 1:3] Append completed.")
    await c.ok("SELECT INBOX")
    resp = await c.ok("FETCH 1:3 (FLAGS BODY.PEEK[])")
    assert resp.untagged == [
        b"* 1 FETCH (FLAGS (\\Flagged \\Recent) BODY[] {%d}\r\n%s)" % (len(m1), m1),
        b"* 2 FETCH (FLAGS (\\Recent) BODY[] {%d}\r\n%s)" % (len(m2), m2),
        b"* 3 FETCH (FLAGS (\\Seen \\Recent) BODY[] {%d}\r\n%s)" % (len(m3), m3),
    ]
    await c.logout()


async def test_an_io_error_in_the_middle_of_an_append_consumes_its_literals(
    env: Env, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The storage fails to start the second message (as an mdbox file create that met
    # EEXIST did): its literal and the third message's bytes must still be read as
    # APPEND data, never as commands, and nothing of the APPEND is saved.
    from aiodbox.storage.mailbox import Transaction

    real_save = Transaction.save
    calls = []

    async def failing_second(self: Transaction, source: Any, **kwargs: Any) -> int:
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.EIO, "simulated I/O error")
        return await real_save(self, source, **kwargs)

    monkeypatch.setattr(Transaction, "save", failing_second)
    c = await env.client(login="alice")
    m1, m2, m3 = simple(1), b"x NOOP\r\n" * 50, simple(3)
    await c.send_raw(
        b"a1 APPEND INBOX {%d+}\r\n%s {%d+}\r\n%s {%d+}\r\n%s\r\n"
        % (len(m1), m1, len(m2), m2, len(m3), m3)
    )
    resp = await c.read_until("a1")
    assert resp.tagged == (
        b"a1 NO [SERVERBUG] Internal error occurred. Refer to server log for more information."
    )
    assert resp.untagged == []  # the second literal was not read as 50 NOOPs
    assert any("simulated I/O error" in (r.exc_text or "") for r in caplog.records)
    resp = await c.ok("STATUS INBOX (MESSAGES)")
    assert resp.untagged == [b'* STATUS "INBOX" (MESSAGES 0)']
    await c.logout()


async def test_append_to_selected_mailbox_announces_exists(env: Env) -> None:
    c = await _with_messages(env, 1)
    resp = await c.ok(append_command("INBOX", simple(2)))
    assert resp.untagged == [b"* 2 EXISTS"]
    await c.logout()


async def test_append_too_large_refused_before_continuation(make_env) -> None:  # type: ignore[no-untyped-def]
    async for env in make_env(max_literal_size=1000):
        c = await env.client(login="alice")
        resp = await c.command(b"APPEND INBOX {5000}\r\n" + b"x" * 5000)
        # The server answered without a "+": the client never sent the literal.
        assert resp.tagged.endswith(b"NO [TOOBIG] Message too large.")
        # A non-synchronising one is refused too; its bytes are skipped.
        await c.send_raw(b"a2 APPEND INBOX {2000+}\r\n" + b"y" * 2000 + b"\r\na3 NOOP\r\n")
        resp = await c.read_until("a2")
        assert resp.tagged.endswith(b"NO [TOOBIG] Message too large.")
        resp = await c.read_until("a3")
        assert resp.status == "OK"
        resp = await c.ok("STATUS INBOX (MESSAGES)")
        assert resp.untagged == [b'* STATUS "INBOX" (MESSAGES 0)']
        assert b"APPENDLIMIT=1000" in (await c.ok("CAPABILITY")).untagged[0]
        await c.logout()


# ---------------------------------------------------------------------- fetch


async def test_fetch_items(env: Env) -> None:
    c = await env.client(login="alice")
    msg = simple(1)
    await c.ok(append_command("INBOX", msg, "", "01-Feb-2024 10:00:00 +0100"))
    await c.ok("SELECT INBOX")
    resp = await c.ok("FETCH 1 (UID FLAGS RFC822.SIZE INTERNALDATE ENVELOPE BODY BODYSTRUCTURE)")
    assert resp.untagged == [
        b"* 1 FETCH (UID 1 FLAGS (\\Recent) RFC822.SIZE %d "
        b'INTERNALDATE "01-Feb-2024 10:00:00 +0100" '
        b'ENVELOPE ("Mon, 7 Feb 1994 21:52:01 -0800" "message 1" (("Sender 1" NIL "sender1" '
        b'"example.com")) (("Sender 1" NIL "sender1" "example.com")) (("Sender 1" NIL "sender1" '
        b'"example.com")) ((NIL NIL "rcpt" "example.org")) NIL NIL NIL "<1@example.com>") '
        b'BODY ("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 19 1) '
        b'BODYSTRUCTURE ("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 19 1 '
        b"NIL NIL NIL NIL))" % len(msg)
    ]
    header, _, text = msg.partition(b"\r\n\r\n")
    resp = await c.ok(
        "FETCH 1 (BODY.PEEK[HEADER] BODY.PEEK[TEXT] BODY.PEEK[]<0.10> "
        "BODY.PEEK[HEADER.FIELDS (subject To)] BODY.PEEK[HEADER.FIELDS.NOT (Subject To Date "
        "Message-ID)] BODY.PEEK[1] BODY.PEEK[1]<5.4> BODY.PEEK[2])"
    )
    assert resp.untagged == [
        b"* 1 FETCH (BODY[HEADER] {%d}\r\n%s BODY[TEXT] {%d}\r\n%s BODY[]<0> {10}\r\n%s "
        % (len(header) + 4, header + b"\r\n\r\n", len(text), text, msg[:10])
        + b"BODY[HEADER.FIELDS (SUBJECT TO)] {44}\r\n"
        b"To: rcpt@example.org\r\nSubject: message 1\r\n\r\n "
        b"BODY[HEADER.FIELDS.NOT (SUBJECT TO DATE MESSAGE-ID)] {40}\r\n"
        b"From: Sender 1 <sender1@example.com>\r\n\r\n "
        b"BODY[1] {%d}\r\n%s BODY[1]<5> {4}\r\n%s BODY[2] {0}\r\n)" % (len(text), text, text[5:9])
    ]
    resp = await c.ok("FETCH 1 (RFC822.HEADER RFC822.TEXT)")
    assert resp.untagged[0].startswith(b"* 1 FETCH (FLAGS (\\Seen \\Recent) RFC822.HEADER {")
    resp = await c.ok("FETCH 1 FAST")
    assert resp.untagged[0].startswith(b"* 1 FETCH (FLAGS (\\Seen \\Recent) INTERNALDATE ")
    await c.logout()


async def test_fetch_sets_seen_unless_peek_or_readonly(env: Env) -> None:
    c = await _with_messages(env, 3)
    resp = await c.ok("FETCH 1 BODY.PEEK[]")
    assert b"FLAGS" not in resp.untagged[0]
    resp = await c.ok("FETCH 1 BODY[TEXT]")
    assert resp.untagged[0].startswith(b"* 1 FETCH (FLAGS (\\Seen \\Recent) BODY[TEXT] {")
    resp = await c.ok("FETCH 1 BODY[TEXT]")  # already seen: no FLAGS
    assert resp.untagged[0].startswith(b"* 1 FETCH (BODY[TEXT] {")
    resp = await c.ok("FETCH 2 RFC822")
    assert resp.untagged[0].startswith(b"* 2 FETCH (FLAGS (\\Seen \\Recent) RFC822 {")
    await c.ok("EXAMINE INBOX")
    resp = await c.ok("FETCH 3 BODY[]")
    assert b"FLAGS" not in resp.untagged[0]
    resp = await c.ok("FETCH 1:3 FLAGS")
    assert resp.untagged == [
        b"* 1 FETCH (FLAGS (\\Seen))",
        b"* 2 FETCH (FLAGS (\\Seen))",
        b"* 3 FETCH (FLAGS ())",
    ]
    await c.logout()


async def test_fetch_multipart_sections_and_binary(env: Env) -> None:
    c = await env.client(login="alice")
    await c.ok(append_command("INBOX", MULTIPART))
    await c.ok("SELECT INBOX")
    resp = await c.ok(
        "FETCH 1 (BODY.PEEK[1] BODY.PEEK[1.MIME] BODY.PEEK[2] BODY.PEEK[2.HEADER] "
        "BODY.PEEK[2.TEXT] BODY.PEEK[2.1] BODY.PEEK[3] BODY.PEEK[2.HEADER.FIELDS (X-A)] "
        "BODY.PEEK[1.HEADER])"
    )
    assert resp.untagged == [
        b"* 1 FETCH (BODY[1] {16}\r\naGVsbG8Ad29ybGQ= "
        b"BODY[1.MIME] {63}\r\n"
        b"Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n "
        b"BODY[2] {36}\r\nSubject: inner\r\nX-A: 1\r\n\r\ninner body "
        b"BODY[2.HEADER] {26}\r\nSubject: inner\r\nX-A: 1\r\n\r\n "
        b"BODY[2.TEXT] {10}\r\ninner body "
        b"BODY[2.1] {10}\r\ninner body "
        b"BODY[3] {0}\r\n "
        b"BODY[2.HEADER.FIELDS (X-A)] {10}\r\nX-A: 1\r\n\r\n "
        b"BODY[1.HEADER] {0}\r\n)"
    ]
    resp = await c.ok(
        "FETCH 1 (BINARY.PEEK[1] BINARY.SIZE[1] BINARY.PEEK[2.1] BINARY.PEEK[1]<2.3>)"
    )
    assert resp.untagged == [
        b"* 1 FETCH (BINARY[1] ~{11}\r\nhello\x00world BINARY.SIZE[1] 11 "
        b"BINARY[2.1] {10}\r\ninner body BINARY[1]<2> {3}\r\nllo)"
    ]
    await c.logout()


async def test_fetch_errors(env: Env) -> None:
    c = await _with_messages(env, 2)
    resp = await c.command("FETCH 3 FLAGS")
    assert resp.tagged.endswith(b"BAD Error in IMAP command FETCH: Invalid messageset")
    resp = await c.ok("UID FETCH 99 FLAGS")
    assert resp.untagged == []
    resp = await c.ok("UID FETCH 2:* FLAGS")
    assert resp.untagged == [b"* 2 FETCH (UID 2 FLAGS (\\Recent))"]
    resp = await c.ok("UID FETCH 5:* FLAGS")  # "*" is the highest UID: 5:* means 2:5
    assert resp.untagged == [b"* 2 FETCH (UID 2 FLAGS (\\Recent))"]
    resp = await c.command("FETCH 1 (BODY[")
    assert resp.status == "BAD"
    # A message expunged by another session is left out: NO [EXPUNGEISSUED].
    other = await env.client(login="alice")
    await other.ok("SELECT INBOX")
    await other.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    await other.ok("EXPUNGE")
    resp = await c.command("FETCH 1:2 (FLAGS BODY.PEEK[HEADER])")
    assert resp.tagged.endswith(
        b"NO [EXPUNGEISSUED] Some of the requested messages no longer exist."
    )
    assert len(resp.untagged) == 1 and resp.untagged[0].startswith(b"* 2 FETCH")
    resp = await c.ok("NOOP")
    assert resp.untagged == [b"* 1 EXPUNGE"]
    await other.logout()
    await c.logout()


# ---------------------------------------------------------------------- store


async def test_store_variants(env: Env) -> None:
    c = await _with_messages(env, 3)
    resp = await c.ok("STORE 1 +FLAGS (\\Seen \\Flagged)")
    assert resp.untagged == [b"* 1 FETCH (FLAGS (\\Flagged \\Seen \\Recent))"]
    resp = await c.ok("STORE 1 -FLAGS (\\Flagged)")
    assert resp.untagged == [b"* 1 FETCH (FLAGS (\\Seen \\Recent))"]
    resp = await c.ok("STORE 1:2 FLAGS (\\Answered $Label1)")
    assert resp.untagged == [
        b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Label1)",
        b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Label1 \\*)] "
        b"Flags permitted.",
        b"* 1 FETCH (FLAGS (\\Answered \\Recent $Label1))",
        b"* 2 FETCH (FLAGS (\\Answered \\Recent $Label1))",
    ]
    resp = await c.ok("STORE 3 +FLAGS.SILENT (\\Deleted)")
    assert resp.untagged == []
    resp = await c.ok("UID STORE 3 -FLAGS \\Deleted")
    assert resp.untagged == [b"* 3 FETCH (FLAGS (\\Recent) UID 3)"]
    resp = await c.command("STORE 1 +FLAGS (\\Recent)")
    assert resp.tagged.endswith(b"BAD Error in IMAP command STORE: Invalid system flag \\RECENT")
    resp = await c.command("STORE 4 +FLAGS (\\Seen)")
    assert resp.status == "BAD"
    await c.logout()


async def test_store_unchangedsince(env: Env) -> None:
    c = await _with_messages(env, 2)
    resp = await c.ok("FETCH 1:2 MODSEQ")
    modseqs = [int(m) for m in re.findall(rb"MODSEQ \((\d+)\)", b"".join(resp.untagged))]
    await c.ok("STORE 2 +FLAGS (\\Flagged)")
    resp = await c.ok(f"STORE 1:2 (UNCHANGEDSINCE {max(modseqs)}) +FLAGS (\\Seen)")
    assert resp.tagged.endswith(b"OK [MODIFIED 2] Conditional STORE failed")
    assert len(resp.untagged) == 1 and resp.untagged[0].startswith(
        b"* 1 FETCH (FLAGS (\\Seen \\Recent) MODSEQ ("
    )
    await c.logout()


# ---------------------------------------------------------------------- copy/move


async def test_copy_and_move(env: Env) -> None:
    c = await _with_messages(env, 3)
    resp = await c.ok("COPY 1:2 Trash")
    m = re.search(rb"OK \[COPYUID (\d+) 1:2 1:2\] Copy completed\.", resp.tagged)
    assert m is not None, resp.tagged
    resp = await c.ok("UID COPY 3 Trash")
    assert re.search(rb"\[COPYUID \d+ 3 3\]", resp.tagged)
    resp = await c.ok("UID COPY 77 Trash")
    assert resp.tagged.endswith(b"OK No messages found.")
    resp = await c.command("COPY 1 Nope")
    assert resp.tagged.endswith(b"NO [TRYCREATE] Mailbox doesn't exist: Nope")
    resp = await c.ok("MOVE 2 Archive")
    assert re.fullmatch(rb"\* OK \[COPYUID \d+ 2 1\] Moved UIDs\.", resp.untagged[0])
    assert resp.untagged[1:] == [b"* 2 EXPUNGE"]
    assert resp.tagged.endswith(b"OK Move completed.")
    resp = await c.ok("UID MOVE 1,3 Archive")
    assert re.fullmatch(rb"\* OK \[COPYUID \d+ 1,3 2:3\] Moved UIDs\.", resp.untagged[0])
    assert resp.untagged[1:] == [b"* 1 EXPUNGE", b"* 1 EXPUNGE"]
    resp = await c.ok("STATUS Trash (MESSAGES)")
    assert resp.untagged == [b'* STATUS "Trash" (MESSAGES 3)']
    resp = await c.ok("STATUS Archive (MESSAGES)")
    assert resp.untagged == [b'* STATUS "Archive" (MESSAGES 3)']
    await c.logout()


# ---------------------------------------------------------------------- search


async def test_search_keys(env: Env) -> None:
    c = await env.client(login="alice")
    await c.ok(
        append_command(
            "INBOX", simple(1, subject="hello world"), "\\Seen", "01-Jan-2020 00:00:00 +0000"
        )
    )
    await c.ok(append_command("INBOX", simple(2, body="needle in the body\r\n"), "\\Flagged $Work"))
    await c.ok(append_command("INBOX", simple(3) + b"x" * 5000, "\\Deleted"))
    await c.ok("SELECT INBOX")
    cases = {
        "ALL": b"* SEARCH 1 2 3",
        "SEEN": b"* SEARCH 1",
        "UNSEEN": b"* SEARCH 2 3",
        "FLAGGED UNDELETED": b"* SEARCH 2",
        "KEYWORD $Work": b"* SEARCH 2",
        "UNKEYWORD $work": b"* SEARCH 1 3",
        "SUBJECT hello": b"* SEARCH 1",
        "BODY needle": b"* SEARCH 2",
        "TEXT rcpt@example.org": b"* SEARCH 1 2 3",
        'HEADER Message-ID "<2@' + 'example.com>"': b"* SEARCH 2",
        "FROM sender3": b"* SEARCH 3",
        "LARGER 1000": b"* SEARCH 3",
        "SMALLER 1000": b"* SEARCH 1 2",
        "BEFORE 1-Jan-2021": b"* SEARCH 1",
        "SINCE 1-Jan-2021": b"* SEARCH 2 3",
        "SENTON 7-Feb-1994": b"* SEARCH 1 2 3",
        "OR SEEN FLAGGED": b"* SEARCH 1 2",
        "NOT (SEEN)": b"* SEARCH 2 3",
        "2:*": b"* SEARCH 2 3",
        "UID 1,3": b"* SEARCH 1 3",
        "RECENT": b"* SEARCH 1 2 3",  # this session saw them first
        "NEW": b"* SEARCH 2 3",
        "OLD": b"* SEARCH",
        "YOUNGER 3600": b"* SEARCH 2 3",
        "OLDER 3600": b"* SEARCH 1",
        "CHARSET UTF-8 SUBJECT HELLO": b"* SEARCH 1",
    }
    for criteria, expected in cases.items():
        resp = await c.ok(f"SEARCH {criteria}")
        assert resp.untagged == [expected], criteria
    resp = await c.ok("UID SEARCH SEEN")
    assert resp.untagged == [b"* SEARCH 1"]
    resp = await c.command("SEARCH CHARSET X-NOPE ALL")
    assert resp.tagged.endswith(b"NO [BADCHARSET (UTF-8 US-ASCII)] Unsupported charset.")
    resp = await c.ok("SEARCH MODSEQ 1")
    assert re.fullmatch(rb"\* SEARCH 1 2 3 \(MODSEQ \d+\)", resp.untagged[0])
    await c.logout()


async def test_esearch_and_searchres(env: Env) -> None:
    c = await _with_messages(env, 5)
    await c.ok("STORE 2,4 +FLAGS (\\Seen)")
    resp = await c.ok("SEARCH RETURN (MIN MAX COUNT ALL) UNSEEN")
    assert resp.untagged == [
        b'* ESEARCH (TAG "%s") MIN 1 MAX 5 ALL 1,3,5 COUNT 3' % resp.tagged.split()[0]
    ]
    resp = await c.ok("UID SEARCH RETURN () SEEN")
    assert resp.untagged == [b'* ESEARCH (TAG "%s") UID ALL 2,4' % resp.tagged.split()[0]]
    resp = await c.ok("SEARCH RETURN (COUNT) KEYWORD nothing")
    assert resp.untagged == [b'* ESEARCH (TAG "%s") COUNT 0' % resp.tagged.split()[0]]
    resp = await c.ok("SEARCH RETURN (SAVE) SEEN")
    assert resp.untagged == []
    resp = await c.ok("FETCH $ (UID)")
    assert resp.untagged == [b"* 2 FETCH (UID 2)", b"* 4 FETCH (UID 4)"]
    resp = await c.ok("UID SEARCH UID $")
    assert resp.untagged == [b"* SEARCH 2 4"]
    await c.logout()


# ---------------------------------------------------------------------- expunge


async def test_expunge_and_uid_expunge(env: Env) -> None:
    c = await _with_messages(env, 5)
    await c.ok("STORE 1,2,4 +FLAGS.SILENT (\\Deleted)")
    resp = await c.ok("UID EXPUNGE 2:4")
    assert resp.untagged == [b"* 2 EXPUNGE", b"* 3 EXPUNGE"]
    resp = await c.ok("EXPUNGE")
    assert resp.untagged == [b"* 1 EXPUNGE"]
    resp = await c.ok("FETCH 1:* UID")
    assert resp.untagged == [b"* 1 FETCH (UID 3)", b"* 2 FETCH (UID 5)"]
    await c.logout()


# ---------------------------------------------------------------------- IDLE


async def test_idle_done(env: Env) -> None:
    c = await _with_messages(env, 1)
    await c.send_raw(b"i1 IDLE\r\n")
    assert await c.read_response_line() == b"+ idling"
    await c.send_raw(b"DONE\r\n")
    resp = await c.read_until("i1")
    assert resp.tagged == b"i1 OK Idle completed."
    await c.send_raw(b"i2 IDLE\r\n")
    assert await c.read_response_line() == b"+ idling"
    await c.send_raw(b"NOOP\r\n")
    resp = await c.read_until("i2")
    assert resp.status == "BAD"
    await c.ok("NOOP")
    await c.logout()


# ---------------------------------------------------------------------- RFC 3501 §8


async def test_rfc3501_sample_session(env: Env) -> None:
    """The commands of RFC 3501 §8 (message 12 of 18, \\Deleted set, logout)."""
    c = await env.client()
    await c.ok("LOGIN alice secret")
    for i in range(1, 19):
        await c.ok(append_command("INBOX", simple(i), "\\Seen" if i < 17 else ""))
    c2 = RawClient(c.reader, c.writer)
    c2._n = 0
    resp = await c2.command("select inbox", tag="a002")
    assert b"* 18 EXISTS" in resp.untagged
    assert b"* OK [UNSEEN 17] First unseen." in resp.untagged
    assert b"* 18 RECENT" in resp.untagged
    assert resp.tagged == b"a002 OK [READ-WRITE] Select completed."
    resp = await c2.command("fetch 12 full", tag="a003")
    line = resp.untagged[0]
    assert line.startswith(b"* 12 FETCH (FLAGS (\\Seen \\Recent) INTERNALDATE ")
    assert b" RFC822.SIZE %d ENVELOPE (" % len(simple(12)) in line
    assert b' BODY ("text" "plain" ' in line
    assert resp.tagged == b"a003 OK Fetch completed."
    resp = await c2.command("fetch 12 body[header]", tag="a004")
    header = simple(12).split(b"\r\n\r\n")[0] + b"\r\n\r\n"
    assert resp.untagged == [b"* 12 FETCH (BODY[HEADER] {%d}\r\n%s)" % (len(header), header)]
    resp = await c2.command("store 12 +flags \\deleted", tag="a005")
    assert resp.untagged == [b"* 12 FETCH (FLAGS (\\Deleted \\Seen \\Recent))"]
    assert resp.tagged == b"a005 OK Store completed."
    resp = await c2.command("logout", tag="a006")
    assert resp.untagged == [b"* BYE Logging out"]
    assert resp.tagged == b"a006 OK Logout completed."
    await c.close()


# ---------------------------------------------------------------------- errors


async def test_protocol_errors_answer_bad_and_keep_serving(env: Env) -> None:
    c = await env.client(login="alice")
    for bad_line in (
        b"",
        b"x",
        b"a1 FROB",
        b"a2 SELECT",
        b"a3 FETCH 1 (",
        b'a4 LIST ""',
        b"\x00\xff",
    ):
        await c.send_raw(bad_line + b"\r\n")
        line = await c.read_response_line()
        assert b" BAD " in line, (bad_line, line)
    resp = await c.ok("NOOP")
    assert resp.untagged == []
    await c.logout()


async def test_storage_error_becomes_no_with_code(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aiodbox.storage.errors import StorageUnavailable
    from aiodbox.storage.mailbox import Mailbox

    async def failing(self: Mailbox, *args: object, **kwargs: object) -> list[int]:
        raise StorageUnavailable("the disk is on fire")

    c = await _with_messages(env, 1)
    monkeypatch.setattr(Mailbox, "expunge", failing)
    resp = await c.command("EXPUNGE")
    assert resp.tagged.endswith(b"NO [UNAVAILABLE] the disk is on fire")
    await c.ok("NOOP")
    await c.logout()


async def test_unexpected_exception_is_serverbug(
    env: Env, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from aiodbox.imap.commands import COMMANDS, CommandSpec

    async def broken(conn: object, cmd: object) -> None:
        raise ZeroDivisionError("boom")

    c = await env.client(login="alice")
    monkeypatch.setitem(COMMANDS, "NAMESPACE", CommandSpec(broken))  # type: ignore[arg-type]
    resp = await c.command("NAMESPACE")
    assert resp.tagged.endswith(
        b"NO [SERVERBUG] Internal error occurred. Refer to server log for more information."
    )
    assert b"Traceback" not in resp.tagged and b"boom" not in resp.tagged
    assert any("ZeroDivisionError" in (r.exc_text or "") for r in caplog.records)
    await c.ok("NOOP")
    await c.logout()
