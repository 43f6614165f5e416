"""Command grammar: every command, the RFC 3501 examples, and the tricky corners."""

from __future__ import annotations

import datetime as dt

import pytest
from imap_events import Err, feed, one_command, one_error

from aiodbox.imap.protocol import (
    Authenticate,
    Capability,
    Check,
    Close,
    ContinuationRequired,
    Copy,
    Create,
    Delete,
    Enable,
    Expunge,
    Fetch,
    FetchAttribute,
    Id,
    Idle,
    List,
    Login,
    Logout,
    Lsub,
    Move,
    Namespace,
    Noop,
    QResync,
    Rename,
    Search,
    SearchAge,
    SearchAll,
    SearchAnd,
    SearchDate,
    SearchFlag,
    SearchHeader,
    SearchModSeq,
    SearchNot,
    SearchOr,
    SearchSequence,
    SearchSize,
    SearchText,
    Section,
    Select,
    SequenceSet,
    StartTLS,
    Status,
    Store,
    StoreMode,
    Subscribe,
    Unselect,
    Unsubscribe,
)

ALL_SEQ = SequenceSet(((1, None),))


def seq(text: str) -> SequenceSet:
    return SequenceSet.parse(text)


# ----------------------------------------------------------- RFC 3501 §8 sample session


def test_rfc3501_sample_session_commands() -> None:
    session = (
        b"a001 login mrc secret\r\n"
        b"a002 select inbox\r\n"
        b"a003 fetch 12 full\r\n"
        b"a004 fetch 12 body[header]\r\n"
        b"a005 store 12 +flags \\deleted\r\n"
        b"a006 logout\r\n"
    )
    events = feed(session)
    full = tuple(
        FetchAttribute(n) for n in ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY")
    )
    assert events == [
        Login("a001", "mrc", "secret"),
        Select("a002", "INBOX"),
        Fetch("a003", seq("12"), full, macro="FULL"),
        Fetch("a004", seq("12"), (FetchAttribute("BODY", Section(text="HEADER")),)),
        Store("a005", seq("12"), StoreMode.ADD, ("\\Deleted",)),
        Logout("a006"),
    ]


# ------------------------------------------------------------------- simple commands


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"a002 CAPABILITY\r\n", Capability("a002")),
        (b"a047 NOOP\r\n", Noop("a047")),
        (b"A023 LOGOUT\r\n", Logout("A023")),
        (b"a001 STARTTLS\r\n", StartTLS("a001")),
        (b"FXXZ CHECK\r\n", Check("FXXZ")),
        (b"A341 CLOSE\r\n", Close("A341")),
        (b"A202 EXPUNGE\r\n", Expunge("A202")),
        (b"a1 UNSELECT\r\n", Unselect("a1")),
        (b"a1 IDLE\r\n", Idle("a1")),
        (b"a1 NAMESPACE\r\n", Namespace("a1")),
        (b"a1 noop\r\n", Noop("a1")),
        (b"a1 NoOp\n", Noop("a1")),  # bare LF tolerated, as Dovecot does
        (b"]x NOOP\r\n", Noop("]x")),  # "]" is an ASTRING-CHAR, allowed in tags
    ],
)
def test_no_argument_commands(line: bytes, expected: object) -> None:
    assert one_command(line) == expected


def test_authenticate_without_and_with_initial_response() -> None:
    assert one_command(b"a1 AUTHENTICATE gssapi\r\n") == Authenticate("a1", "GSSAPI")
    assert one_command(b"a1 AUTHENTICATE PLAIN AGZyZWQAc2VjcmV0\r\n") == Authenticate(
        "a1", "PLAIN", b"\x00fred\x00secret"
    )
    assert one_command(b"a1 AUTHENTICATE EXTERNAL =\r\n") == Authenticate("a1", "EXTERNAL", b"")
    assert one_error(b"a1 AUTHENTICATE PLAIN AGZ!\r\n").tag == "a1"


def test_login_forms() -> None:
    assert one_command(b"a001 LOGIN SMITH SESAME\r\n") == Login("a001", "SMITH", "SESAME")
    assert one_command(b'a1 LOGIN "fred smith" "pa\\"ss\\\\w"\r\n') == Login(
        "a1", "fred smith", 'pa"ss\\w'
    )


def test_login_with_literals_asks_for_continuation_each_time() -> None:
    events = feed(b"a1 LOGIN {4}\r\nfred {6}\r\nsecret\r\n")
    assert events == [
        ContinuationRequired("a1", 4),
        ContinuationRequired("a1", 6),
        Login("a1", "fred", "secret"),
    ]


def test_login_with_empty_literals() -> None:
    events = feed(b"a1 LOGIN {0}\r\n {0}\r\n\r\n")
    assert events == [
        ContinuationRequired("a1", 0),
        ContinuationRequired("a1", 0),
        Login("a1", "", ""),
    ]


def test_non_synchronising_literal_needs_no_continuation() -> None:
    events = feed(b"a1 LOGIN {4+}\r\nfred {3+}\r\n\xc3\xa4x\r\n")
    assert events == [Login("a1", "fred", "äx")]


def test_literal_may_hold_crlf_and_brace_text() -> None:
    cmd = one_command(b"a1 SEARCH TEXT {9+}\r\nx\r\n{3}\r\ny\r\n")
    assert cmd == Search("a1", SearchText("TEXT", b"x\r\n{3}\r\ny"))


# ---------------------------------------------------------------------- mailboxes


def test_select_and_examine() -> None:
    assert one_command(b"A142 SELECT INBOX\r\n") == Select("A142", "INBOX")
    assert one_command(b"A932 EXAMINE blurdybloop\r\n") == Select(
        "A932", "blurdybloop", readonly=True
    )


def test_inbox_is_case_insensitive_but_other_names_are_not() -> None:
    assert one_command(b'a1 SELECT "iNbOx"\r\n') == Select("a1", "INBOX")
    assert one_command(b"a1 SELECT Inbox/Sub\r\n") == Select("a1", "Inbox/Sub")
    assert one_command(b"a1 SELECT Archive\r\n") == Select("a1", "Archive")


def test_select_condstore_and_qresync() -> None:
    assert one_command(b"a1 SELECT INBOX (CONDSTORE)\r\n") == Select("a1", "INBOX", condstore=True)
    cmd = one_command(
        b"A02 SELECT INBOX (QRESYNC (67890007 20050715194045000 "
        b"41,43:211,214:541 (1:10 41:50)))\r\n"
    )
    assert cmd == Select(
        "A02",
        "INBOX",
        qresync=QResync(
            67890007, 20050715194045000, seq("41,43:211,214:541"), (seq("1:10"), seq("41:50"))
        ),
    )
    assert one_command(b"A1 EXAMINE INBOX (QRESYNC (1 2))\r\n") == Select(
        "A1", "INBOX", readonly=True, qresync=QResync(1, 2)
    )
    assert one_command(b"A1 SELECT INBOX (QRESYNC (1 2 (1 5)))\r\n") == Select(
        "A1", "INBOX", qresync=QResync(1, 2, None, (seq("1"), seq("5")))
    )
    assert one_error(b"A1 SELECT INBOX (BOGUS)\r\n").tag == "A1"
    assert one_error(b"A1 SELECT INBOX ()\r\n").tag == "A1"


def test_mailbox_names_are_modified_utf7_decoded() -> None:
    assert one_command(b"a1 CREATE Entw&APw-rfe\r\n") == Create("a1", "Entwürfe")
    assert one_command(b'a1 DELETE "a&-b"\r\n') == Delete("a1", "a&b")
    err = one_error(b"a1 CREATE Entw&APw\r\n")
    assert err.tag == "a1"
    assert "mUTF-7" in err.message


def test_mailbox_commands() -> None:
    assert one_command(b"A003 CREATE owatagusiam/\r\n") == Create("A003", "owatagusiam/")
    assert one_command(b"a1 CREATE Sent (USE (\\sent \\Drafts))\r\n") == Create(
        "a1", "Sent", ("\\Sent", "\\Drafts")
    )
    assert one_command(b"A683 DELETE blurdybloop\r\n") == Delete("A683", "blurdybloop")
    assert one_command(b"A684 RENAME blurdybloop sarasoop\r\n") == Rename(
        "A684", "blurdybloop", "sarasoop"
    )
    assert one_command(b"A002 SUBSCRIBE #news.comp.mail.mime\r\n") == Subscribe(
        "A002", "#news.comp.mail.mime"
    )
    assert one_command(b"A002 UNSUBSCRIBE #news.comp.mail.mime\r\n") == Unsubscribe(
        "A002", "#news.comp.mail.mime"
    )
    assert one_command(b"A042 STATUS blurdybloop (UIDNEXT MESSAGES)\r\n") == Status(
        "A042", "blurdybloop", ("UIDNEXT", "MESSAGES")
    )
    assert one_command(b"A1 STATUS INBOX (highestmodseq size unseen)\r\n") == Status(
        "A1", "INBOX", ("HIGHESTMODSEQ", "SIZE", "UNSEEN")
    )
    assert one_error(b"A1 STATUS INBOX (BOGUS)\r\n").message == "Unknown STATUS item BOGUS"


def test_mailbox_name_as_literal() -> None:
    events = feed(b"a1 RENAME {3}\r\nold {3}\r\nnew\r\n")
    assert events[-1] == Rename("a1", "old", "new")
    assert [e for e in events if isinstance(e, ContinuationRequired)] == [
        ContinuationRequired("a1", 3),
        ContinuationRequired("a1", 3),
    ]


def test_list_basic_forms_from_rfc3501() -> None:
    assert one_command(b'A682 LIST "" *\r\n') == List("A682", "", ("*",))
    assert one_command(b'A101 LIST "" ""\r\n') == List("A101", "", ("",))
    assert one_command(b'A102 LIST #news.comp.mail.misc ""\r\n') == List(
        "A102", "#news.comp.mail.misc", ("",)
    )
    assert one_command(b"A202 LIST ~/Mail/ %\r\n") == List("A202", "~/Mail/", ("%",))
    assert one_command(b'A1 LIST "" foo/%/b]r*\r\n') == List("A1", "", ("foo/%/b]r*",))
    assert one_command(b'A002 LSUB "#news." "comp.mail.*"\r\n') == Lsub(
        "A002", "#news.", "comp.mail.*"
    )


def test_list_extended() -> None:
    cmd = one_command(
        b'A1 LIST (SUBSCRIBED RECURSIVEMATCH) "" ("INBOX" "Drafts/%") '
        b"RETURN (CHILDREN SPECIAL-USE STATUS (MESSAGES UNSEEN))\r\n"
    )
    assert cmd == List(
        "A1",
        "",
        ("INBOX", "Drafts/%"),
        frozenset({"SUBSCRIBED", "RECURSIVEMATCH"}),
        frozenset({"CHILDREN", "SPECIAL-USE", "STATUS"}),
        ("MESSAGES", "UNSEEN"),
        extended=True,
    )
    assert one_command(b'A2 LIST () "" % RETURN ()\r\n') == List("A2", "", ("%",), extended=True)
    assert one_command(b'A3 LIST (special-use remote) "" *\r\n') == List(
        "A3", "", ("*",), frozenset({"SPECIAL-USE", "REMOTE"}), extended=True
    )
    assert one_error(b'A4 LIST (RECURSIVEMATCH) "" *\r\n').tag == "A4"
    assert one_error(b'A5 LIST (BOGUS) "" *\r\n').tag == "A5"
    assert one_error(b'A6 LIST "" * RETURN (BOGUS)\r\n').tag == "A6"


# ------------------------------------------------------------------- APPEND (parse)


def test_append_first_line_announces_message() -> None:
    events = feed(
        b'A003 APPEND saved-messages (\\Seen) "17-Jul-1996 02:44:25 -0700" {5}\r\nhello\r\n'
    )
    start = events[0]
    assert start.tag == "A003"  # type: ignore[union-attr]
    assert start.mailbox == "saved-messages"  # type: ignore[union-attr]
    assert start.flags == ("\\Seen",)  # type: ignore[union-attr]
    tz = dt.timezone(-dt.timedelta(hours=7))
    assert start.date == dt.datetime(1996, 7, 17, 2, 44, 25, tzinfo=tz)  # type: ignore[union-attr]
    assert start.size == 5  # type: ignore[union-attr]
    assert start.synchronizing is True  # type: ignore[union-attr]


def test_append_date_with_space_padded_day() -> None:
    events = feed(b'A1 APPEND INBOX " 7-Jul-1996 02:44:25 +0130" {1+}\r\nx\r\n')
    tz = dt.timezone(dt.timedelta(hours=1, minutes=30))
    assert events[0].date == dt.datetime(1996, 7, 7, 2, 44, 25, tzinfo=tz)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "line",
    [
        b"A1 APPEND INBOX\r\n",
        b"A1 APPEND INBOX (\\Seen)\r\n",
        b'A1 APPEND INBOX "32-Jul-1996 02:44:25 -0700" {5}\r\n',
        b'A1 APPEND INBOX "17-Jux-1996 02:44:25 -0700" {5}\r\n',
        b"A1 APPEND INBOX hello {5}\r\n",
    ],
)
def test_append_syntax_errors(line: bytes) -> None:
    err = one_error(line)
    assert err.tag == "A1"


# -------------------------------------------------------------------------- FETCH


def test_fetch_rfc3501_examples() -> None:
    assert one_command(b"A654 FETCH 2:4 (FLAGS BODY[HEADER.FIELDS (DATE FROM)])\r\n") == Fetch(
        "A654",
        seq("2:4"),
        (
            FetchAttribute("FLAGS"),
            FetchAttribute("BODY", Section(text="HEADER.FIELDS", fields=("DATE", "FROM"))),
        ),
    )
    assert one_command(b"A999 UID FETCH 4827313:4828442 FLAGS\r\n") == Fetch(
        "A999", seq("4827313:4828442"), (FetchAttribute("FLAGS"),), uid=True
    )


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        (b"BODY[]", FetchAttribute("BODY", Section())),
        (b"BODY.PEEK[]<0.2048>", FetchAttribute("BODY", Section(), (0, 2048), peek=True)),
        (b"body[1.2.3]", FetchAttribute("BODY", Section((1, 2, 3)))),
        (b"BODY[1.2.MIME]", FetchAttribute("BODY", Section((1, 2), "MIME"))),
        (b"BODY[2.HEADER]", FetchAttribute("BODY", Section((2,), "HEADER"))),
        (b"BODY[TEXT]<100.50>", FetchAttribute("BODY", Section(text="TEXT"), (100, 50))),
        (
            b'BODY.PEEK[HEADER.FIELDS.NOT (Received "X-Spam")]',
            FetchAttribute(
                "BODY", Section(text="HEADER.FIELDS.NOT", fields=("Received", "X-Spam")), peek=True
            ),
        ),
        (b"BODY", FetchAttribute("BODY")),
        (b"BODYSTRUCTURE", FetchAttribute("BODYSTRUCTURE")),
        (b"ENVELOPE", FetchAttribute("ENVELOPE")),
        (b"RFC822", FetchAttribute("RFC822")),
        (b"RFC822.HEADER", FetchAttribute("RFC822.HEADER")),
        (b"RFC822.TEXT", FetchAttribute("RFC822.TEXT")),
        (b"rfc822.size", FetchAttribute("RFC822.SIZE")),
        (b"INTERNALDATE", FetchAttribute("INTERNALDATE")),
        (b"UID", FetchAttribute("UID")),
        (b"MODSEQ", FetchAttribute("MODSEQ")),
        (b"BINARY.PEEK[1]<0.10>", FetchAttribute("BINARY", Section((1,)), (0, 10), peek=True)),
        (b"BINARY.SIZE[2.1]", FetchAttribute("BINARY.SIZE", Section((2, 1)))),
    ],
)
def test_fetch_items(item: bytes, expected: FetchAttribute) -> None:
    cmd = one_command(b"a1 FETCH 1 " + item + b"\r\n")
    assert isinstance(cmd, Fetch)
    assert cmd.attributes == (expected,)


@pytest.mark.parametrize(
    "item",
    [
        b"BODY[MIME]",  # MIME needs a part number
        b"BODY[HEADER.FIELDS]",  # needs a field list
        b"BODY[HEADER.FIELDS ()]",
        b"BODY[0]",
        b"BODY[1.]",
        b"BODY[BOGUS]",
        b"BODY[]<5>",
        b"BODY[]<0.0>",
        b"BODY.PEEK",
        b"BINARY[1.TEXT]",
        b"FROB",
        b"()",
        b"(FLAGS ALL)",  # macros only stand alone
    ],
)
def test_fetch_item_errors(item: bytes) -> None:
    assert one_error(b"a1 FETCH 1 " + item + b"\r\n").tag == "a1"


def test_fetch_macros() -> None:
    fast = one_command(b"a1 FETCH 1:* fast\r\n")
    assert isinstance(fast, Fetch)
    assert fast.macro == "FAST"
    assert [a.name for a in fast.attributes] == ["FLAGS", "INTERNALDATE", "RFC822.SIZE"]
    everything = one_command(b"a1 FETCH 1 ALL\r\n")
    assert isinstance(everything, Fetch)
    assert [a.name for a in everything.attributes] == [
        "FLAGS",
        "INTERNALDATE",
        "RFC822.SIZE",
        "ENVELOPE",
    ]


def test_fetch_condstore_modifiers() -> None:
    cmd = one_command(b"a1 UID FETCH 1:* (FLAGS) (CHANGEDSINCE 12345 VANISHED)\r\n")
    assert cmd == Fetch(
        "a1", ALL_SEQ, (FetchAttribute("FLAGS"),), uid=True, changed_since=12345, vanished=True
    )
    assert one_command(b"a1 FETCH 1 FLAGS (CHANGEDSINCE 7)\r\n") == Fetch(
        "a1", seq("1"), (FetchAttribute("FLAGS"),), changed_since=7
    )
    # VANISHED needs UID FETCH and CHANGEDSINCE (RFC 7162 §3.2.6)
    assert one_error(b"a1 FETCH 1 FLAGS (CHANGEDSINCE 7 VANISHED)\r\n").tag == "a1"
    assert one_error(b"a1 UID FETCH 1 FLAGS (VANISHED)\r\n").tag == "a1"


@pytest.mark.parametrize(
    ("text", "ranges"),
    [
        (b"*", ((None, None),)),
        (b"1:*", ((1, None),)),
        (b"*:4", ((None, 4),)),
        (b"1,3:5,7:*", ((1, 1), (3, 5), (7, None))),
        (b"4294967295", ((4294967295, 4294967295),)),
    ],
)
def test_sequence_sets_in_fetch(text: bytes, ranges: tuple[object, ...]) -> None:
    cmd = one_command(b"a1 FETCH " + text + b" UID\r\n")
    assert isinstance(cmd, Fetch)
    assert cmd.sequence_set.ranges == ranges


@pytest.mark.parametrize("text", [b"0", b"1:0", b"4294967296", b"1,", b",1", b"1::2", b"a"])
def test_invalid_sequence_sets(text: bytes) -> None:
    assert one_error(b"a1 FETCH " + text + b" UID\r\n").tag == "a1"


def test_saved_search_result_in_sequence_set() -> None:
    cmd = one_command(b"a1 UID FETCH $ FLAGS\r\n")
    assert isinstance(cmd, Fetch)
    assert cmd.sequence_set.saved


# -------------------------------------------------------------------------- STORE


def test_store_variants() -> None:
    assert one_command(b"A003 STORE 2:4 +FLAGS (\\Deleted)\r\n") == Store(
        "A003", seq("2:4"), StoreMode.ADD, ("\\Deleted",)
    )
    assert one_command(b"a1 STORE 1 -flags.silent \\SEEN \\flagged $Junk\r\n") == Store(
        "a1", seq("1"), StoreMode.REMOVE, ("\\Seen", "\\Flagged", "$Junk"), silent=True
    )
    assert one_command(b"a1 UID STORE 5 FLAGS ()\r\n") == Store(
        "a1", seq("5"), StoreMode.REPLACE, (), uid=True
    )
    assert one_command(b"a1 STORE 1 (UNCHANGEDSINCE 320162338) +FLAGS.SILENT (\\Deleted)\r\n") == (
        Store("a1", seq("1"), StoreMode.ADD, ("\\Deleted",), silent=True, unchanged_since=320162338)
    )
    assert one_error(b"a1 STORE 1 FLAGS (\\*)\r\n").tag == "a1"
    assert one_error(b"a1 STORE 1 XFLAGS (\\Seen)\r\n").tag == "a1"
    assert one_error(b"a1 STORE 1 +FLAGS\r\n").tag == "a1"


def test_copy_move_uid_expunge() -> None:
    assert one_command(b"A003 COPY 2:4 MEETING\r\n") == Copy("A003", seq("2:4"), "MEETING")
    assert one_command(b"a1 UID COPY 1:* Trash\r\n") == Copy("a1", ALL_SEQ, "Trash", uid=True)
    assert one_command(b"a1 MOVE 1 Junk\r\n") == Move("a1", seq("1"), "Junk")
    assert one_command(b"a1 uid move 3:5 inbox\r\n") == Move("a1", seq("3:5"), "INBOX", uid=True)
    cmd = one_command(b"a1 UID EXPUNGE 3000:3002\r\n")
    assert cmd == Expunge("a1", seq("3000:3002"))
    assert isinstance(cmd, Expunge)
    assert cmd.uid
    assert one_error(b"a1 UID EXPUNGE\r\n").tag == "a1"
    assert one_error(b"a1 UID NOOP\r\n").message == "Unknown command UID NOOP"


# ------------------------------------------------------------------------- SEARCH


def test_search_rfc3501_examples() -> None:
    assert one_command(b'A282 SEARCH FLAGGED SINCE 1-Feb-1994 NOT FROM "Smith"\r\n') == Search(
        "A282",
        SearchAnd(
            (
                SearchFlag("\\Flagged"),
                SearchDate("INTERNAL", "SINCE", dt.date(1994, 2, 1)),
                SearchNot(SearchHeader("FROM", b"Smith")),
            )
        ),
    )
    assert one_command(b'A283 SEARCH TEXT "string not in mailbox"\r\n') == Search(
        "A283", SearchText("TEXT", b"string not in mailbox")
    )
    events = feed(b"A284 SEARCH CHARSET UTF-8 TEXT {6}\r\n\xe2\x82\xac\xc3\xa4x\r\n")
    assert events == [
        ContinuationRequired("A284", 6),
        Search("A284", SearchText("TEXT", b"\xe2\x82\xac\xc3\xa4x"), charset="UTF-8"),
    ]


def test_search_nested_or_not_parentheses() -> None:
    cmd = one_command(b"a1 SEARCH OR (NOT SEEN FROM x) NOT OR DELETED (ANSWERED) 1:3\r\n")
    assert cmd == Search(
        "a1",
        SearchAnd(
            (
                SearchOr(
                    SearchAnd((SearchNot(SearchFlag("\\Seen")), SearchHeader("FROM", b"x"))),
                    SearchNot(SearchOr(SearchFlag("\\Deleted"), SearchFlag("\\Answered"))),
                ),
                SearchSequence(seq("1:3")),
            )
        ),
    )


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (b"ALL", SearchAll()),
        (b"NEW", SearchAnd((SearchFlag("\\Recent"), SearchFlag("\\Seen", False)))),
        (b"OLD", SearchFlag("\\Recent", False)),
        (b"RECENT", SearchFlag("\\Recent")),
        (b"UNANSWERED", SearchFlag("\\Answered", False)),
        (b"UNDELETED", SearchFlag("\\Deleted", False)),
        (b"DRAFT", SearchFlag("\\Draft")),
        (b"UNDRAFT", SearchFlag("\\Draft", False)),
        (b"UNFLAGGED", SearchFlag("\\Flagged", False)),
        (b"UNSEEN", SearchFlag("\\Seen", False)),
        (b"KEYWORD $Forwarded", SearchFlag("$Forwarded")),
        (b"UNKEYWORD foo", SearchFlag("foo", False)),
        (b"BCC a", SearchHeader("BCC", b"a")),
        (b"CC a", SearchHeader("CC", b"a")),
        (b"SUBJECT {3+}\r\n a)", SearchHeader("SUBJECT", b" a)")),
        (b"TO a", SearchHeader("TO", b"a")),
        (b'HEADER Message-ID "<x@y>"', SearchHeader("Message-ID", b"<x@y>")),
        (b'HEADER X-Empty ""', SearchHeader("X-Empty", b"")),
        (b"BODY hello", SearchText("BODY", b"hello")),
        (b"BEFORE 01-Jan-2000", SearchDate("INTERNAL", "BEFORE", dt.date(2000, 1, 1))),
        (b'ON "5-mar-2001"', SearchDate("INTERNAL", "ON", dt.date(2001, 3, 5))),
        (b"SENTBEFORE 1-Feb-1994", SearchDate("SENT", "BEFORE", dt.date(1994, 2, 1))),
        (b"SENTON 1-Feb-1994", SearchDate("SENT", "ON", dt.date(1994, 2, 1))),
        (b"SENTSINCE 1-Feb-1994", SearchDate("SENT", "SINCE", dt.date(1994, 2, 1))),
        (b"LARGER 1024", SearchSize("LARGER", 1024)),
        (b"SMALLER 0", SearchSize("SMALLER", 0)),
        (b"UID 1:*", SearchSequence(ALL_SEQ, uid=True)),
        (b"*", SearchSequence(seq("*"))),
        (b"$", SearchSequence(SequenceSet(saved=True))),
        (b"MODSEQ 620162338", SearchModSeq(620162338)),
        (
            b'MODSEQ "/flags/\\\\draft" all 620162338',
            SearchModSeq(620162338, "/flags/\\draft", "all"),
        ),
        (b"OLDER 3600", SearchAge("OLDER", 3600)),
        (b"YOUNGER 60", SearchAge("YOUNGER", 60)),
        (b"(SEEN)", SearchFlag("\\Seen")),
    ],
)
def test_search_keys(keys: bytes, expected: object) -> None:
    cmd = one_command(b"a1 SEARCH " + keys + b"\r\n")
    assert isinstance(cmd, Search)
    assert cmd.criteria == expected


@pytest.mark.parametrize(
    "keys",
    [
        b"",
        b"BOGUS",
        b"FROM",
        b"OR SEEN",
        b"NOT",
        b"(SEEN",
        b"SEEN)",
        b"SINCE 1-Foo-1994",
        b"SINCE 31-Feb-1994",
        b"SINCE 1994-02-01",
        b"LARGER -1",
        b'MODSEQ "/flags/x" bogus 5',
        b"UID",
        b"SEEN  UNSEEN",
        b"SEEN ",
    ],
)
def test_search_errors(keys: bytes) -> None:
    assert one_error(b"a1 SEARCH " + keys + b"\r\n").tag == "a1"


def test_search_depth_is_bounded() -> None:
    deep = b"(" * 5000 + b"SEEN" + b")" * 5000
    err = one_error(b"a1 SEARCH " + deep + b"\r\n")
    assert "nested" in err.message
    nots = b"NOT " * 5000 + b"SEEN"
    assert "nested" in one_error(b"a1 SEARCH " + nots + b"\r\n").message
    ok = one_command(b"a1 SEARCH " + b"NOT " * 50 + b"SEEN\r\n")
    assert isinstance(ok, Search)


def test_esearch_return_options() -> None:
    cmd = one_command(b"a1 UID SEARCH RETURN (MIN MAX COUNT ALL SAVE) CHARSET us-ascii SEEN\r\n")
    assert cmd == Search(
        "a1",
        SearchFlag("\\Seen"),
        charset="US-ASCII",
        uid=True,
        return_options=("MIN", "MAX", "COUNT", "ALL", "SAVE"),
    )
    empty = one_command(b"a1 SEARCH RETURN () UNSEEN\r\n")
    assert isinstance(empty, Search)
    assert empty.return_options == ("ALL",)
    plain = one_command(b"a1 SEARCH UNSEEN\r\n")
    assert isinstance(plain, Search)
    assert plain.return_options is None
    assert one_error(b"a1 SEARCH RETURN (BOGUS) ALL\r\n").tag == "a1"


# ----------------------------------------------------------------- ID, ENABLE ...


def test_id_enable() -> None:
    assert one_command(b"a1 ID NIL\r\n") == Id("a1", None)
    assert one_command(b'a1 ID ("name" "sodr" "version" NIL)\r\n') == Id(
        "a1", (("name", "sodr"), ("version", None))
    )
    assert one_command(b"a1 ID ()\r\n") == Id("a1", ())
    assert one_error(b'a1 ID ("name")\r\n').tag == "a1"
    assert one_command(b"a1 ENABLE CONDSTORE qresync\r\n") == Enable("a1", ("CONDSTORE", "QRESYNC"))
    assert one_error(b"a1 ENABLE\r\n").tag == "a1"


# ------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("line", "tag", "fragment"),
    [
        (b"\r\n", None, "Empty"),
        (b"a1\r\n", "a1", "Missing command"),
        (b"a1 \r\n", "a1", ""),
        (b"+1 NOOP\r\n", None, "tag"),
        (b"a1 FROBNICATE\r\n", "a1", "Unknown command FROBNICATE"),
        (b"a1 NOOP extra\r\n", "a1", "extra"),
        (b"a1 NOOP \r\n", "a1", "extra"),
        (b"a1 LOGIN fred\r\n", "a1", "Missing"),
        (b'a1 LOGIN "fred\xe4" x\r\n', "a1", "8-bit"),
        (b'a1 LOGIN "fr\\ed" x\r\n', "a1", "escape"),
        (b'a1 LOGIN "fred x\r\n', "a1", "quoted"),
        (b"a1 SELECT \xe4\r\n", "a1", ""),
        (b"a1 SELECT (x)\r\n", "a1", ""),
        (b"a1 NOOP\rx\r\n", "a1", ""),
    ],
)
def test_errors_carry_tag_and_message(line: bytes, tag: str | None, fragment: str) -> None:
    err = one_error(line)
    assert err.tag == tag
    assert fragment in err.message
    assert "\r" not in err.message
    assert "\n" not in err.message


def test_nul_in_literal_is_refused() -> None:
    err = one_error(b"a1 LOGIN {3+}\r\na\x00b x\r\n")
    assert err == Err("a1", "NUL in literal")


def test_error_names_the_command() -> None:
    events = feed(b"a1 FROB\r\n")
    assert events == [Err("a1", "Unknown command FROB")]
