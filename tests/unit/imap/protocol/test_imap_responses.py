"""Response encoder: byte-exact output."""

from __future__ import annotations

import datetime as dt

import pytest

from aiodbox.imap.protocol import (
    FetchAttribute,
    LocalProtocolError,
    RemoteProtocolError,
    Section,
    compact,
)
from aiodbox.imap.protocol import responses as r

PDT = dt.timezone(-dt.timedelta(hours=7))


def test_tagged_and_untagged_status() -> None:
    assert r.tagged("A1", "OK", "LOGIN completed") == b"A1 OK LOGIN completed\r\n"
    assert r.tagged("A2", "NO", "no such mailbox", r.TRYCREATE) == (
        b"A2 NO [TRYCREATE] no such mailbox\r\n"
    )
    assert r.tagged("A3", "OK", "", r.READ_WRITE) == b"A3 OK [READ-WRITE]\r\n"
    assert r.tagged("A4", "OK", "") == b"A4 OK\r\n"
    assert r.untagged_status("OK", "UIDs valid", r.ResponseCode.uidvalidity(3857529045)) == (
        b"* OK [UIDVALIDITY 3857529045] UIDs valid\r\n"
    )
    assert r.untagged_status("PREAUTH", "welcome") == b"* PREAUTH welcome\r\n"
    assert r.bye("Logging out") == b"* BYE Logging out\r\n"


def test_text_is_sanitised() -> None:
    assert r.tagged("A1", "NO", "bad\r\nA2 OK injected\x00ä") == (
        b"A1 NO bad  A2 OK injected ?\r\n"
    )
    assert r.continuation(b"x\ny") == b"+ x y\r\n"
    assert r.sanitize_text(b"\x7f\x80\x09ok") == b" ? ok"


def test_invalid_tag_or_status_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        r.tagged("A 1", "OK", "x")
    with pytest.raises(LocalProtocolError):
        r.tagged("+", "OK", "x")
    with pytest.raises(LocalProtocolError):
        r.tagged("A1", "MAYBE", "x")  # type: ignore[arg-type]


def test_response_codes() -> None:
    rc = r.ResponseCode
    assert rc.uidnext(5).to_bytes() == b"[UIDNEXT 5]"
    assert rc.unseen(12).to_bytes() == b"[UNSEEN 12]"
    assert rc.appenduid(38505, 3955).to_bytes() == b"[APPENDUID 38505 3955]"
    assert rc.appenduid(38505, [3955, 3956, 3957]).to_bytes() == b"[APPENDUID 38505 3955:3957]"
    assert rc.copyuid(38505, [304, 319, 320, 321], [3956, 3957, 3958, 3959]).to_bytes() == (
        b"[COPYUID 38505 304,319:321 3956:3959]"
    )
    # the order of the pairs is kept, so sources and destinations still correspond
    assert rc.copyuid(1, [9, 3, 4], [20, 21, 22]).to_bytes() == b"[COPYUID 1 9,3:4 20:22]"
    assert rc.permanentflags(["\\Deleted", "\\Seen", "\\*"]).to_bytes() == (
        b"[PERMANENTFLAGS (\\Deleted \\Seen \\*)]"
    )
    assert rc.highestmodseq(715194045007).to_bytes() == b"[HIGHESTMODSEQ 715194045007]"
    assert rc.capability(["IMAP4rev1", "LITERAL+", "AUTH=PLAIN"]).to_bytes() == (
        b"[CAPABILITY IMAP4rev1 LITERAL+ AUTH=PLAIN]"
    )
    assert rc.badcharset(["UTF-8", "US-ASCII"]).to_bytes() == b"[BADCHARSET (UTF-8 US-ASCII)]"
    assert rc.badcharset().to_bytes() == b"[BADCHARSET]"
    assert rc.modified([7, 9, 8, 12]).to_bytes() == b"[MODIFIED 7:9,12]"
    for code, name in [
        (r.TOOBIG, b"TOOBIG"),
        (r.ALREADYEXISTS, b"ALREADYEXISTS"),
        (r.NONEXISTENT, b"NONEXISTENT"),
        (r.CLOSED, b"CLOSED"),
        (r.READ_ONLY, b"READ-ONLY"),
        (r.NOMODSEQ, b"NOMODSEQ"),
    ]:
        assert code.to_bytes() == b"[" + name + b"]"


def test_bad_response_codes_are_refused() -> None:
    with pytest.raises(LocalProtocolError):
        r.ResponseCode("TWO WORDS")
    with pytest.raises(LocalProtocolError):
        r.ResponseCode("X", b"a]b")
    with pytest.raises(LocalProtocolError):
        r.ResponseCode("X", b"a\r\nb")
    with pytest.raises(LocalProtocolError):
        r.ResponseCode.permanentflags(["bad flag"])


def test_error_response() -> None:
    assert r.error_response(RemoteProtocolError("Unknown command FOO", tag="a1")) == (
        b"a1 BAD Unknown command FOO\r\n"
    )
    assert r.error_response(RemoteProtocolError("Literal too large", tag="a2", code="TOOBIG")) == (
        b"a2 BAD [TOOBIG] Literal too large\r\n"
    )
    assert r.error_response(RemoteProtocolError("Empty command line")) == (
        b"* BAD Empty command line\r\n"
    )


def test_continuations() -> None:
    assert r.continuation("Ready") == b"+ Ready\r\n"
    assert r.continuation() == b"+ \r\n"
    assert r.continuation_base64(b"\x00challenge") == b"+ AGNoYWxsZW5nZQ==\r\n"


def test_untagged_data_lines() -> None:
    assert r.capability_response(["IMAP4rev1", "IDLE"]) == b"* CAPABILITY IMAP4rev1 IDLE\r\n"
    assert r.enabled_response(["CONDSTORE"]) == b"* ENABLED CONDSTORE\r\n"
    assert r.enabled_response([]) == b"* ENABLED\r\n"
    assert r.exists_response(172) == b"* 172 EXISTS\r\n"
    assert r.recent_response(1) == b"* 1 RECENT\r\n"
    assert r.expunge_response(3) == b"* 3 EXPUNGE\r\n"
    assert r.flags_response(["\\Answered", "\\Flagged", "$Forwarded"]) == (
        b"* FLAGS (\\Answered \\Flagged $Forwarded)\r\n"
    )


def test_list_and_lsub() -> None:
    assert r.list_response("INBOX", "/", ["\\HasNoChildren"]) == (
        b'* LIST (\\HasNoChildren) "/" "INBOX"\r\n'
    )
    assert r.list_response("Entwürfe", ".", []) == b'* LIST () "." "Entw&APw-rfe"\r\n'
    assert r.list_response("", None, ["\\Noselect"]) == b'* LIST (\\Noselect) NIL ""\r\n'
    assert r.list_response("a\\b", "\\", []) == b'* LIST () "\\\\" "a\\\\b"\r\n'
    assert r.list_response("Foo", "/", [], childinfo=["SUBSCRIBED"]) == (
        b'* LIST () "/" "Foo" ("CHILDINFO" ("SUBSCRIBED"))\r\n'
    )
    assert r.list_response("New", "/", [], oldname="Old") == (
        b'* LIST () "/" "New" ("OLDNAME" ("Old"))\r\n'
    )
    assert r.list_response("news", "/", ["\\Noselect"], lsub=True) == (
        b'* LSUB (\\Noselect) "/" "news"\r\n'
    )
    with pytest.raises(LocalProtocolError):
        r.list_response("x", "//", [])


def test_status_search_esearch_vanished() -> None:
    assert r.status_response("blurdybloop", {"MESSAGES": 231, "UIDNEXT": 44292}) == (
        b'* STATUS "blurdybloop" (MESSAGES 231 UIDNEXT 44292)\r\n'
    )
    assert r.search_response([2, 84, 882]) == b"* SEARCH 2 84 882\r\n"
    assert r.search_response([]) == b"* SEARCH\r\n"
    assert r.search_response([2, 5], modseq=917162500) == b"* SEARCH 2 5 (MODSEQ 917162500)\r\n"
    assert r.esearch_response(tag="A282", minimum=2, count=3) == (
        b'* ESEARCH (TAG "A282") MIN 2 COUNT 3\r\n'
    )
    assert r.esearch_response(tag="A283", uid=True, all_numbers=[2, 10, 11]) == (
        b'* ESEARCH (TAG "A283") UID ALL 2,10:11\r\n'
    )
    assert r.esearch_response(tag="A284", all_numbers=[], count=0) == (
        b'* ESEARCH (TAG "A284") COUNT 0\r\n'
    )
    assert r.esearch_response(tag="a", maximum=9, all_numbers=[1, 2, 3, 5], modseq=1236) == (
        b'* ESEARCH (TAG "a") MAX 9 ALL 1:3,5 MODSEQ 1236\r\n'
    )
    assert r.vanished_response([41, 43, 44, 45], earlier=True) == (
        b"* VANISHED (EARLIER) 41,43:45\r\n"
    )
    assert r.vanished_response([7]) == b"* VANISHED 7\r\n"
    assert r.vanished_response([]) == b""


def test_id_and_namespace() -> None:
    assert r.id_response(None) == b"* ID NIL\r\n"
    assert r.id_response({"name": "aiodbox", "version": None}) == (
        b'* ID ("name" "aiodbox" "version" NIL)\r\n'
    )
    assert r.namespace_response([("", "/")], None, None) == b'* NAMESPACE (("" "/")) NIL NIL\r\n'
    assert r.namespace_response([("", "/")], [("~", "/")], [("#shared/", "/"), ("#p", None)]) == (
        b'* NAMESPACE (("" "/")) (("~" "/")) (("#shared/" "/")("#p" NIL))\r\n'
    )


def test_internaldate_format() -> None:
    value = dt.datetime(1996, 7, 17, 2, 44, 25, tzinfo=PDT)
    assert r.format_internaldate(value) == b'"17-Jul-1996 02:44:25 -0700"'
    early = dt.datetime(2001, 1, 2, 3, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30)))
    assert r.format_internaldate(early) == b'"02-Jan-2001 03:04:05 +0530"'
    assert r.format_internaldate(early.astimezone(dt.UTC)) == b'"01-Jan-2001 21:34:05 +0000"'
    with pytest.raises(LocalProtocolError):
        r.format_internaldate(dt.datetime(2001, 1, 1))


def test_fetch_items_and_lines() -> None:
    assert r.fetch_response(
        12,
        [
            r.fetch_uid(4827313),
            r.fetch_flags(["\\Seen"]),
            r.fetch_internaldate(dt.datetime(1996, 7, 17, 2, 44, 25, tzinfo=PDT)),
            r.fetch_rfc822_size(4286),
            r.fetch_modseq(624140003),
        ],
    ) == (
        b"* 12 FETCH (UID 4827313 FLAGS (\\Seen) "
        b'INTERNALDATE "17-Jul-1996 02:44:25 -0700" RFC822.SIZE 4286 MODSEQ (624140003))\r\n'
    )
    assert r.fetch_response(1, [r.fetch_envelope(b'("date" NIL)')]) == (
        b'* 1 FETCH (ENVELOPE ("date" NIL))\r\n'
    )
    assert r.fetch_bodystructure(b'("TEXT" "PLAIN")') == b'BODYSTRUCTURE ("TEXT" "PLAIN")'
    assert r.fetch_bodystructure(b"(x)", extensible=False) == b"BODY (x)"


def test_fetch_body_sections_stream_after_a_literal_header() -> None:
    peek = FetchAttribute(
        "BODY", Section(text="HEADER.FIELDS", fields=("From", "X Odd")), (0, 100), peek=True
    )
    assert r.fetch_item_name(peek) == b'BODY[HEADER.FIELDS (From "X Odd")]<0>'
    assert r.fetch_literal_header(peek, 42) == b'BODY[HEADER.FIELDS (From "X Odd")]<0> {42}\r\n'
    whole = FetchAttribute("BODY", Section())
    streamed = (
        r.fetch_open(3, [r.fetch_uid(9)])
        + b" "
        + r.fetch_literal_header(whole, 5)
        + b"hello"
        + r.fetch_close()
    )
    assert streamed == b"* 3 FETCH (UID 9 BODY[] {5}\r\nhello)\r\n"
    mime = FetchAttribute("BODY", Section((1, 2), "MIME"))
    assert r.fetch_value(mime, b"a\r\n") == b"BODY[1.2.MIME] {3}\r\na\r\n"
    assert r.fetch_value(FetchAttribute("BODY", Section((3,))), None) == b"BODY[3] NIL"
    binary = FetchAttribute("BINARY", Section((1,)), (10, 5), peek=True)
    assert r.fetch_item_name(binary) == b"BINARY[1]<10>"
    assert r.fetch_binary_size(Section((1, 2)), 77) == b"BINARY.SIZE[1.2] 77"
    assert r.fetch_item_name(FetchAttribute("RFC822.HEADER")) == b"RFC822.HEADER"


def test_sequence_set_compaction() -> None:
    assert compact([1, 2, 3, 5]) == b"1:3,5"
    assert compact([5, 3, 1, 2, 2]) == b"1:3,5"
    assert compact([]) == b""
    assert compact([7]) == b"7"
    assert compact(range(1, 100001)) == b"1:100000"
