"""Fuzzing the sans-IO IMAP parser.

Invariant: for any input bytes, cut into any chunks, ``receive_data()`` + ``next_event()``
only ever return events or raise :class:`RemoteProtocolError` (whose BAD reply encodes
cleanly), and the parser's buffers stay within the configured limits.  And after a bad
line, the next valid command still parses.
"""

from __future__ import annotations

import itertools
import random

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from aiodbox.imap.protocol import (
    NEED_DATA,
    AppendMessageStart,
    Authenticate,
    ConnectionClosed,
    Event,
    Idle,
    Noop,
    RemoteProtocolError,
    SaslResponse,
    ServerConnection,
)
from aiodbox.imap.protocol.parser import literal_at_end
from aiodbox.imap.protocol.responses import error_response

MAX_LINE = 256
MAX_LITERAL = 128

VALID = [
    b"a001 login mrc secret\r\n",
    b"a1 LOGIN {4}\r\nfred {6+}\r\nsecret\r\n",
    b"a002 select inbox (QRESYNC (1 2 1:5 (1:3 4:6)))\r\n",
    b"a003 fetch 12 full\r\n",
    b"a004 UID fetch 1:*,5 (FLAGS BODY.PEEK[1.2.HEADER.FIELDS (From To)]<0.100>) "
    b"(CHANGEDSINCE 5 VANISHED)\r\n",
    b"a005 store 12 +flags.silent (\\deleted $Junk)\r\n",
    b'A1 APPEND Drafts (\\Draft) "17-Jul-1996 02:44:25 -0700" {5}\r\nhello {3+}\r\nabc\r\n',
    b'a6 SEARCH RETURN (MIN COUNT) CHARSET UTF-8 OR (FROM "x\\"y" NOT SEEN) '
    b"SINCE 1-Feb-1994 UID 1:* HEADER X-A {3+}\r\nabc\r\n",
    b'a7 LIST (SUBSCRIBED RECURSIVEMATCH) "" ("%" "&AOQ-*") RETURN (STATUS (MESSAGES))\r\n',
    b'a8 ID ("name" "x" "version" NIL)\r\n',
    b"a9 AUTHENTICATE PLAIN\r\nAGZyZWQAc2VjcmV0\r\n",
    b"a10 IDLE\r\nDONE\r\n",
    b"a11 CREATE Sent (USE (\\Sent))\r\n",
    b"a12 UID EXPUNGE 1:5\r\n",
    b"a13 ENABLE CONDSTORE\r\n",
]


def _drive(conn: ServerConnection, rng: random.Random) -> list[Event]:
    """Drain next_event(), deciding literals and one-line modes at random."""
    events: list[Event] = []
    for _ in range(10_000):  # bounded: every call makes progress or returns NEED_DATA
        try:
            event = conn.next_event()
        except RemoteProtocolError as exc:
            reply = error_response(exc)  # must encode: valid tag, no CR/LF in the text
            assert reply.endswith(b"\r\n")
            assert b"\r" not in reply[:-2]
            assert b"\n" not in reply[:-2]
            continue
        if event is NEED_DATA:
            assert conn.buffered_size <= MAX_LINE
            assert conn.command_buffer_size <= MAX_LINE + MAX_LITERAL
            return events
        assert isinstance(event, Event)
        events.append(event)
        if isinstance(event, ConnectionClosed):
            return events
        if isinstance(event, AppendMessageStart):
            if rng.random() < 0.8:
                conn.accept_literal()
            else:
                conn.reject_literal()
        elif isinstance(event, Idle) and rng.random() < 0.7:
            conn.expect_idle_done()
        elif isinstance(event, Authenticate | SaslResponse) and rng.random() < 0.7:
            conn.expect_sasl_response()
    raise AssertionError("next_event() did not settle")


def _feed_in_chunks(data: bytes, cuts: list[int], seed: int, eof: bool = True) -> list[Event]:
    conn = ServerConnection(max_line_length=MAX_LINE, max_literal_size=MAX_LITERAL)
    rng = random.Random(seed)
    events: list[Event] = []
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for start, end in itertools.pairwise(points):
        conn.receive_data(data[start:end])
        events += _drive(conn, rng)
        assert conn.buffered_size <= MAX_LINE
    if eof:
        conn.receive_data(b"")
        events += _drive(conn, rng)
        assert isinstance(events[-1], ConnectionClosed)
    return events


_FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_FUZZ
@given(
    st.binary(max_size=2000),
    st.lists(st.integers(min_value=0, max_value=4000), max_size=12),
    st.integers(),
)
def test_random_bytes(data: bytes, cuts: list[int], seed: int) -> None:
    _feed_in_chunks(data, cuts, seed)


_ALPHABET = st.sampled_from(
    [b" ", b"\r\n", b"\n", b"{", b"}", b"+", b"(", b")", b'"', b"\\", b"[", b"]", b"<", b">",
     b"*", b"%", b"$", b"1", b"0", b":", b",", b".", b"{5}\r\n", b"{3+}\r\n", b"{999999}\r\n",
     b"\x00", b"\xe4", b"a", b"NIL", b"UID", b"FETCH", b"APPEND", b"BODY[", b"OR", b"NOT"]
)  # fmt: skip


@st.composite
def mutated_commands(draw: st.DrawFn) -> bytes:
    """Valid commands with random insertions, deletions, replacements and truncations."""
    parts = draw(st.lists(st.sampled_from(VALID), min_size=1, max_size=4))
    data = bytearray(b"".join(parts))
    for _ in range(draw(st.integers(min_value=0, max_value=6))):
        pos = draw(st.integers(min_value=0, max_value=len(data)))
        op = draw(st.sampled_from(["insert", "delete", "replace", "truncate", "dup"]))
        if op == "insert":
            data[pos:pos] = draw(_ALPHABET)
        elif op == "delete":
            del data[pos : pos + draw(st.integers(min_value=1, max_value=8))]
        elif op == "replace" and pos < len(data):
            data[pos] = draw(st.integers(min_value=0, max_value=255))
        elif op == "truncate":
            del data[pos:]
        else:
            data[pos:pos] = data[pos : pos + draw(st.integers(min_value=1, max_value=300))]
    return bytes(data)


@_FUZZ
@given(
    mutated_commands(),
    st.lists(st.integers(min_value=0, max_value=4000), max_size=8),
    st.integers(),
)
def test_mutated_valid_commands(data: bytes, cuts: list[int], seed: int) -> None:
    _feed_in_chunks(data, cuts, seed)


@_FUZZ
@given(st.lists(st.sampled_from(VALID), min_size=1, max_size=6), st.integers())
def test_valid_commands_any_chunking_never_error(parts: list[bytes], seed: int) -> None:
    data = b"".join(parts)
    rng = random.Random(seed)
    cuts = [rng.randrange(len(data) + 1) for _ in range(rng.randrange(10))]
    conn = ServerConnection(max_line_length=MAX_LINE, max_literal_size=MAX_LITERAL)
    points = sorted(set(cuts) | {0, len(data)})
    for start, end in itertools.pairwise(points):
        conn.receive_data(data[start:end])
        while (event := conn.next_event()) is not NEED_DATA:  # no RemoteProtocolError here
            if isinstance(event, AppendMessageStart):
                conn.accept_literal()
            elif isinstance(event, Idle):
                conn.expect_idle_done()
            elif isinstance(event, Authenticate):
                conn.expect_sasl_response()


@_FUZZ
@given(
    st.binary(max_size=600).filter(lambda b: b"\n" not in b),
    st.lists(st.integers(min_value=0, max_value=1000), max_size=6),
)
def test_next_valid_command_parses_after_a_bad_line(garbage: bytes, cuts: list[int]) -> None:
    line = garbage + b"\r\n"
    assume(literal_at_end(line) is None)  # else the client itself sent a literal next
    data = line + b"z1 NOOP\r\n"
    conn = ServerConnection(max_line_length=MAX_LINE, max_literal_size=MAX_LITERAL)
    events: list[Event] = []
    errors = 0
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for start, end in itertools.pairwise(points):
        conn.receive_data(data[start:end])
        while True:
            try:
                event = conn.next_event()
            except RemoteProtocolError:
                errors += 1
                continue
            if event is NEED_DATA:
                break
            assert isinstance(event, Event)
            events.append(event)
            if isinstance(event, AppendMessageStart):  # pragma: no cover - excluded above
                conn.reject_literal()
    assert events[-1] == Noop("z1")
    assert errors <= 1


def test_after_errors_of_every_kind_the_connection_keeps_serving() -> None:
    bad = [
        b"\r\n",
        b"a1 FROB\r\n",
        b"a2 LOGIN {5+}\r\nab\r\nc\r\n",
        b"a3 LOGIN fred {999}\r\n",
        b"a4 LOGIN " + b"x" * (MAX_LINE * 3) + b"\r\n",
        b"a5 LOGIN {200+}\r\n" + b"\r\n" * 100 + b"\r\n",
        b'a6 LOGIN "\xe4" x\r\n',
        b"a7 APPEND INBOX {2+}\r\nab (\\Seen\r\n",
        b"a8 SEARCH " + b"(" * 200 + b"\r\n",
    ]
    for chunk in bad:
        conn = ServerConnection(max_line_length=MAX_LINE, max_literal_size=MAX_LITERAL)
        events = _feed_in_chunks(chunk + b"z1 NOOP\r\n", [], 0)
        assert Noop("z1") in events, chunk
        del conn
