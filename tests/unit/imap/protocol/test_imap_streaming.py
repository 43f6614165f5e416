"""The streaming parser: literals as events, APPEND streaming, limits, resync, modes."""

from __future__ import annotations

import random
import time

import pytest
from imap_events import Err, drain, feed, merge_chunks, reject

from aiodbox.imap.protocol import (
    NEED_DATA,
    AppendEnd,
    AppendMessageStart,
    Authenticate,
    ConnectionClosed,
    ContinuationRequired,
    Idle,
    IdleDone,
    LiteralChunk,
    LiteralEnd,
    LocalProtocolError,
    Login,
    Noop,
    RemoteProtocolError,
    SaslResponse,
    Search,
    SearchAnd,
    ServerConnection,
)
from aiodbox.imap.protocol.parser import literal_at_end

# -------------------------------------------------------------------- APPEND streaming


def test_multiappend_two_messages() -> None:
    data = b"A1 APPEND Drafts (\\Draft) {5}\r\nhello {3+}\r\nabc\r\nA2 NOOP\r\n"
    assert merge_chunks(feed(data)) == [
        AppendMessageStart("A1", "Drafts", ("\\Draft",), None, 5, True, 0),
        LiteralChunk(b"hello"),
        LiteralEnd(),
        AppendMessageStart("A1", "Drafts", (), None, 3, False, 1),
        LiteralChunk(b"abc"),
        LiteralEnd(),
        AppendEnd("A1", 2),
        Noop("A2"),
    ]


def test_append_with_literal_mailbox_name() -> None:
    events = feed(b"A1 APPEND {5}\r\nINBOX {2}\r\nhi\r\n")
    assert merge_chunks(events) == [
        ContinuationRequired("A1", 5),
        AppendMessageStart("A1", "INBOX", (), None, 2, True, 0),
        LiteralChunk(b"hi"),
        LiteralEnd(),
        AppendEnd("A1", 1),
    ]


def test_append_empty_message_literal() -> None:
    events = feed(b"A1 APPEND INBOX {0}\r\n\r\n")
    assert events == [
        AppendMessageStart("A1", "INBOX", (), None, 0, True, 0),
        LiteralEnd(),
        AppendEnd("A1", 1),
    ]


def test_accept_literal_returns_the_continuation_only_when_synchronising() -> None:
    conn = ServerConnection()
    conn.receive_data(b"A1 APPEND INBOX {3}\r\n")
    assert isinstance(conn.next_event(), AppendMessageStart)
    assert conn.accept_literal() == b"+ Ready\r\n"
    conn.receive_data(b"abc {2+}\r\nxy\r\n")
    out: list[object] = []
    while (ev := conn.next_event()) is not NEED_DATA:
        out.append(ev)
        if isinstance(ev, AppendMessageStart):
            assert conn.accept_literal() == b""
    assert out[-1] == AppendEnd("A1", 2)


def test_next_event_refuses_to_run_before_the_literal_decision() -> None:
    conn = ServerConnection()
    conn.receive_data(b"A1 APPEND INBOX {3+}\r\nabc\r\n")
    assert isinstance(conn.next_event(), AppendMessageStart)
    with pytest.raises(LocalProtocolError):
        conn.next_event()
    conn.accept_literal()
    with pytest.raises(LocalProtocolError):
        conn.accept_literal()
    with pytest.raises(LocalProtocolError):
        conn.reject_literal()
    assert conn.next_event() == LiteralChunk(b"abc")


def test_one_mebibyte_append_is_streamed_never_held_whole() -> None:
    rng = random.Random(1234)
    payload = rng.randbytes(1024 * 1024)
    conn = ServerConnection()
    conn.receive_data(b"A1 APPEND INBOX {%d}\r\n" % len(payload))
    start = conn.next_event()
    assert isinstance(start, AppendMessageStart)
    assert start.size == len(payload)
    conn.accept_literal()
    received = bytearray()
    pos = 0
    biggest_piece = 0
    tail = b"\r\nA2 NOOP\r\n"
    stream = payload + tail
    events: list[object] = []
    while pos < len(stream):
        n = rng.randint(1, 70000)
        piece = stream[pos : pos + n]
        biggest_piece = max(biggest_piece, len(piece))
        pos += n
        conn.receive_data(piece)
        while (ev := conn.next_event()) is not NEED_DATA:
            if isinstance(ev, LiteralChunk):
                assert 0 < len(ev.data) <= len(piece)
                received += ev.data
            else:
                events.append(ev)
            # The parser never holds more than the piece just fed, and never the message.
            assert conn.buffered_size <= len(piece)
            assert conn.command_buffer_size < 64
        assert conn.buffered_size < len(tail)
    assert received == payload
    assert events == [LiteralEnd(), AppendEnd("A1", 1), Noop("A2")]
    assert biggest_piece < len(payload)


# ----------------------------------------------------- chunking does not change events

CORPUS = [
    b"a001 login mrc secret\r\na002 select inbox\r\na003 fetch 12 full\r\n",
    b"a1 LOGIN {4}\r\nfred {6+}\r\nsecret\r\na2 NOOP\r\n",
    b"A1 APPEND Drafts (\\Draft) {5}\r\nhello {3+}\r\nabc\r\nA2 NOOP\r\n",
    b'A3 APPEND INBOX "17-Jul-1996 02:44:25 -0700" {0+}\r\n\r\n',
    b"a1 FROB {5+}\r\nab\r\nc\r\na2 NOOP\r\n",
    b"a1 SEARCH CHARSET UTF-8 TEXT {6}\r\n\xe2\x82\xac\xc3\xa4x OR SEEN (1:* UID 4)\r\n",
    b"\r\nbad\r\na1 NOOP extra\r\na2 CAPABILITY\n",
    b"a1 APPEND INBOX {3+}\r\nabc (\\Seen\r\na2 NOOP\r\n",
    b'a1 UID FETCH 1:* (BODY.PEEK[HEADER.FIELDS (From "To")]<0.10>) (CHANGEDSINCE 5)\r\n',
]


@pytest.mark.parametrize("data", CORPUS)
def test_byte_at_a_time_equals_all_at_once(data: bytes) -> None:
    whole = merge_chunks(feed(data))
    single = merge_chunks(feed([data[i : i + 1] for i in range(len(data))]))
    assert single == whole
    assert whole  # something was produced


def test_random_chunking_equals_all_at_once() -> None:
    rng = random.Random(7)
    data = b"".join(CORPUS)
    whole = merge_chunks(feed(data))
    for _ in range(20):
        pieces = []
        pos = 0
        while pos < len(data):
            n = rng.randint(1, 40)
            pieces.append(data[pos : pos + n])
            pos += n
        assert merge_chunks(feed(pieces)) == whole


# ------------------------------------------------------------------- rejecting APPEND


def test_reject_synchronising_literal_next_line_is_a_command() -> None:
    events = feed(b"A1 APPEND INBOX {999999999}\r\nA2 NOOP\r\n", decide=reject)
    assert events == [
        AppendMessageStart("A1", "INBOX", (), None, 999999999, True, 0),
        Noop("A2"),
    ]


def test_reject_non_synchronising_literal_discards_exactly_n_bytes() -> None:
    data = b"A1 APPEND INBOX {12+}\r\nA9 NOOP\r\nxyz {4+}\r\nA8 \r\nA2 NOOP\r\n"
    events = feed(data, decide=reject)
    assert events == [AppendMessageStart("A1", "INBOX", (), None, 12, False, 0), Noop("A2")]
    # the same, one byte at a time
    pieces = [data[i : i + 1] for i in range(len(data))]
    assert feed(pieces, decide=reject) == events


def test_reject_second_multiappend_message() -> None:
    decisions = iter([True, False])

    def decide(conn: ServerConnection, ev: AppendMessageStart) -> None:
        if next(decisions):
            conn.accept_literal()
        else:
            conn.reject_literal()

    events = feed(b"A1 APPEND INBOX {1+}\r\na {1+}\r\nb\r\nA2 NOOP\r\n", decide=decide)
    assert merge_chunks(events) == [
        AppendMessageStart("A1", "INBOX", (), None, 1, False, 0),
        LiteralChunk(b"a"),
        LiteralEnd(),
        AppendMessageStart("A1", "INBOX", (), None, 1, False, 1),
        Noop("A2"),
    ]


def test_syntax_error_in_multiappend_tail_aborts_the_append() -> None:
    events = feed(b"A1 APPEND INBOX {1+}\r\na (\\Seen {3+}\r\nabc\r\nA2 NOOP\r\n")
    assert merge_chunks(events)[-2:] == [
        Err("A1", "Expected a flag", aborted_append=True),
        Noop("A2"),
    ]


def test_eof_in_the_middle_of_append() -> None:
    conn = ServerConnection()
    events = feed(b"A1 APPEND INBOX {10+}\r\nabc", conn)
    assert conn.in_append
    conn.receive_data(b"")
    drain(conn, events)
    assert events[-2:] == [
        Err("A1", "Connection closed in the middle of APPEND", aborted_append=True),
        ConnectionClosed(),
    ]
    assert conn.next_event() == ConnectionClosed()


def test_eof_and_data_after_it() -> None:
    conn = ServerConnection()
    conn.receive_data(b"a1 NOOP\r\na2 NO")
    conn.receive_data(b"")
    assert conn.next_event() == Noop("a1")
    assert conn.next_event() == ConnectionClosed()
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"x")


# -------------------------------------------------------------------------- limits


def test_line_too_long_without_lf_is_refused_before_buffering_more() -> None:
    conn = ServerConnection(max_line_length=1024)
    conn.receive_data(b"a1 LOGIN ")
    assert conn.next_event() is NEED_DATA
    errors = []
    for _ in range(100):
        conn.receive_data(b"x" * 100)
        try:
            assert conn.next_event() is NEED_DATA
        except RemoteProtocolError as exc:
            errors.append(exc)
        assert conn.buffered_size <= 1024
        assert conn.command_buffer_size <= 1024
    assert len(errors) == 1
    assert errors[0].tag == "a1"
    assert "too long" in errors[0].message
    conn.receive_data(b"yyy\r\na2 NOOP\r\n")
    assert conn.next_event() == Noop("a2")


def test_line_too_long_with_lf_in_the_same_buffer() -> None:
    conn = ServerConnection(max_line_length=100)
    events = feed(b"a1 NOOP " + b"x" * 200 + b"\r\na2 NOOP\r\n", conn)
    assert events == [Err("a1", "Command line too long"), Noop("a2")]


def test_over_long_line_ending_in_a_non_sync_literal_skips_the_literal() -> None:
    conn = ServerConnection(max_line_length=100)
    data = b"a1 LOGIN " + b"x" * 200 + b" {7+}\r\nA0 NOOP x\r\na2 NOOP\r\n"
    events = feed([data[:150], data[150:]], conn)
    assert events == [Err("a1", "Command line too long"), Noop("a2")]


def test_line_limit_counts_text_across_literals_but_not_literal_bytes() -> None:
    conn = ServerConnection(max_line_length=64, max_literal_size=1000)
    ok = feed(b"a1 LOGIN {500+}\r\n" + b"p" * 500 + b" x\r\n", conn)
    assert isinstance(ok[-1], Login)
    bad = feed(b"a2 LOGIN {5+}\r\nabcde " + b"y" * 80 + b"\r\na3 NOOP\r\n", conn)
    assert bad == [Err("a2", "Command line too long"), Noop("a3")]


def test_synchronising_literal_too_big_is_refused_before_continuation() -> None:
    conn = ServerConnection(max_literal_size=100)
    events = feed(b"a1 LOGIN fred {101}\r\na2 NOOP\r\n", conn)
    assert events == [Err("a1", "Literal too large", "TOOBIG"), Noop("a2")]


def test_non_synchronising_literal_too_big_is_discarded() -> None:
    conn = ServerConnection(max_literal_size=100)
    payload = b"z\r\n" * 50  # 150 bytes, containing CRLFs
    events = feed(b"a1 LOGIN fred {150+}\r\n" + payload + b"\r\na2 NOOP\r\n", conn)
    assert events == [Err("a1", "Literal too large", "TOOBIG"), Noop("a2")]


def test_total_literal_bytes_of_a_command_are_bounded() -> None:
    conn = ServerConnection(max_literal_size=100)
    events = feed(b"a1 LOGIN {60+}\r\n" + b"u" * 60 + b" {60+}\r\n" + b"p" * 60 + b"\r\n", conn)
    assert events == [Err("a1", "Literal too large", "TOOBIG")]
    assert feed(b"a2 NOOP\r\n", conn) == [Noop("a2")]


def test_append_message_literal_is_not_bounded_by_the_parser() -> None:
    conn = ServerConnection(max_literal_size=10)
    events = feed(b"a1 APPEND INBOX {20+}\r\n" + b"m" * 20 + b"\r\n", conn)
    assert merge_chunks(events)[1:] == [LiteralChunk(b"m" * 20), LiteralEnd(), AppendEnd("a1", 1)]


def test_error_is_reported_before_asking_for_the_literal() -> None:
    events = feed(b"a1 FROB {5}\r\na2 NOOP\r\n")
    assert events == [Err("a1", "Unknown command FROB"), Noop("a2")]
    events = feed(b"a1 LOGIN (x) {5}\r\na2 NOOP\r\n")
    assert isinstance(events[0], Err)
    assert events[1:] == [Noop("a2")]


def test_huge_literal_size_digits() -> None:
    events = feed(b"a1 LOGIN {99999999999999999999999}\r\na2 NOOP\r\n")
    assert events[0] == Err("a1", "Literal size too large", "TOOBIG")
    assert events[1:] == [Noop("a2")]


def test_literal_at_end_detection() -> None:
    assert literal_at_end(b"a {5}\r\n") == (5, True)
    assert literal_at_end(b"a {5+}\n") == (5, False)
    assert literal_at_end(b"a {5}x\r\n") is None
    assert literal_at_end(b"a {}\r\n") is None
    assert literal_at_end(b"a {+}\r\n") is None
    assert literal_at_end(b"a 5}\r\n") is None
    assert literal_at_end(b"}\r\n") is None
    assert literal_at_end(b"{" + b"9" * 30 + b"}\r\n") == (2**64, True)


# ------------------------------------------------------------------------- IDLE / SASL


def test_idle_done() -> None:
    conn = ServerConnection()
    conn.receive_data(b"a1 IDLE\r\n")
    assert conn.next_event() == Idle("a1")
    conn.expect_idle_done()
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"done\r\na2 NOOP\r\n")
    assert conn.next_event() == IdleDone("a1")
    assert conn.next_event() == Noop("a2")


def test_idle_other_line_is_an_error_with_the_idle_tag() -> None:
    conn = ServerConnection()
    conn.receive_data(b"a1 IDLE\r\n")
    assert conn.next_event() == Idle("a1")
    conn.expect_idle_done()
    conn.receive_data(b"a2 NOOP\r\na3 NOOP\r\n")
    with pytest.raises(RemoteProtocolError) as info:
        conn.next_event()
    assert info.value.tag == "a1"
    assert info.value.message == "Expected DONE"
    assert conn.next_event() == Noop("a3")


def test_without_expect_idle_done_done_is_a_bad_command() -> None:
    events = feed(b"a1 IDLE\r\nDONE\r\n")
    # "DONE" reads as a tag with no command after it
    assert events == [Idle("a1"), Err("DONE", "Missing command")]


def test_expect_calls_need_the_right_previous_event() -> None:
    conn = ServerConnection()
    with pytest.raises(LocalProtocolError):
        conn.expect_idle_done()
    with pytest.raises(LocalProtocolError):
        conn.expect_sasl_response()
    conn.receive_data(b"a1 NOOP\r\n")
    conn.next_event()
    with pytest.raises(LocalProtocolError):
        conn.expect_idle_done()


def test_sasl_exchange() -> None:
    conn = ServerConnection()
    conn.receive_data(b"a1 AUTHENTICATE PLAIN\r\n")
    assert conn.next_event() == Authenticate("a1", "PLAIN")
    conn.expect_sasl_response()
    conn.receive_data(b"AGZyZWQAc2VjcmV0\r\n")
    assert conn.next_event() == SaslResponse("a1", b"\x00fred\x00secret")
    conn.expect_sasl_response()
    conn.receive_data(b"\r\n")
    assert conn.next_event() == SaslResponse("a1", b"")
    conn.expect_sasl_response()
    conn.receive_data(b"*\r\n")
    assert conn.next_event() == SaslResponse("a1", b"", cancelled=True)
    conn.expect_sasl_response()
    conn.receive_data(b"not base64!\r\na2 NOOP\r\n")
    with pytest.raises(RemoteProtocolError) as info:
        conn.next_event()
    assert info.value.tag == "a1"
    assert conn.next_event() == Noop("a2")


def test_sasl_line_too_long() -> None:
    conn = ServerConnection(max_line_length=100)
    conn.receive_data(b"a1 AUTHENTICATE PLAIN\r\n")
    conn.next_event()
    conn.expect_sasl_response()
    conn.receive_data(b"A" * 200)
    with pytest.raises(RemoteProtocolError) as info:
        conn.next_event()
    assert info.value.tag == "a1"
    conn.receive_data(b"AAAA\r\na2 NOOP\r\n")
    assert conn.next_event() == Noop("a2")


# --------------------------------------------------------------------- performance


def test_simple_command_costs_microseconds() -> None:
    line = b"a1 UID FETCH 1:* (FLAGS UID BODY.PEEK[HEADER.FIELDS (From To)])\r\n"
    conn = ServerConnection()
    n = 2000
    start = time.perf_counter()
    for _ in range(n):
        conn.receive_data(line)
        conn.next_event()
    per_command = (time.perf_counter() - start) / n
    assert per_command < 500e-6, per_command  # generous: typically ~20 µs


def test_many_literals_in_one_command_cost_linear_time() -> None:
    # Re-parsing the command at every literal would be quadratic (about a minute here).
    data = b"a1 SEARCH" + b" TEXT {1+}\r\nx" * 5000 + b"\r\n"
    conn = ServerConnection()
    start = time.perf_counter()
    events = feed(data, conn)
    elapsed = time.perf_counter() - start
    assert len(events) == 1
    assert isinstance(events[0], Search)
    assert isinstance(events[0].criteria, SearchAnd)
    assert len(events[0].criteria.keys) == 5000
    assert elapsed < 2.0, elapsed


def test_later_literals_are_still_checked_by_the_final_parse() -> None:
    events = feed(b"a1 LOGIN {1}\r\nu {1}\r\np (x) {1}\r\nz\r\na2 NOOP\r\n")
    assert [type(e).__name__ for e in events] == [
        "ContinuationRequired",
        "ContinuationRequired",
        "ContinuationRequired",
        "Err",
        "Noop",
    ]
