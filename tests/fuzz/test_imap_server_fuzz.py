"""Fuzzing a running IMAP server.

Invariant: whatever a client sends, the server answers with well-formed responses
(``BAD``/``NO`` for what it cannot do, never a traceback), and keeps serving: after the
input, a ``NOOP`` on the same connection still gets ``OK`` (or, if the input logged the
client out, a new connection does).

Each example uses a fresh connection to one server (over sdbox), logged in or not.
Random bytes are cut into lines (no literal braces there: a random ``{999999}`` would
only make the server wait for bytes that never come, which is correct); literals are
exercised by a second strategy that sends a command prefix, a literal header and
exactly the announced number of bytes.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.integration.imap.client import RawClient
from tests.integration.imap.conftest import (
    Env,
    make_env,  # noqa: F401  (the fixture)
)

pytestmark = pytest.mark.asyncio

_RESPONSE = re.compile(rb"^(\* |\+|[\x21-\x7e]+ (OK|NO|BAD)( |$))")
_SYNC = [f"z{i} NOOP".encode() for i in range(1, 6)]

WORDS = [
    b"a1", b"a2", b"UID", b"LOGIN", b"alice", b"secret", b"SELECT", b"EXAMINE", b"INBOX",
    b"FETCH", b"1:*", b"*", b"1", b"(FLAGS", b"BODY[]", b"BODY.PEEK[HEADER.FIELDS", b"(Subject)]",
    b"STORE", b"+FLAGS", b"(\\Seen)", b"SEARCH", b"OR", b"NOT", b"ALL", b"COPY", b"MOVE",
    b"Trash", b"LIST", b'""', b'"*"', b"%", b"STATUS", b"(MESSAGES)", b"APPEND", b"IDLE",
    b"DONE", b"AUTHENTICATE", b"PLAIN", b"ENABLE", b"QRESYNC", b"CONDSTORE", b"EXPUNGE",
    b"CLOSE", b"UNSELECT", b"NOOP", b"CAPABILITY", b"NAMESPACE", b"ID", b"NIL", b"CREATE",
    b"DELETE", b"RENAME", b"SUBSCRIBE", b"LSUB", b"CHANGEDSINCE", b"RETURN", b"(MIN", b"MAX)",
    b"\"", b"(", b")", b"[", b"]", b"<0.5>", b"\\", b"\x00", b"\xff", b"&", b"-",
]  # fmt: skip

line_bytes = st.binary(max_size=200).map(lambda b: b.replace(b"{", b"(").replace(b"}", b")"))
word_line = st.lists(st.sampled_from(WORDS), min_size=1, max_size=12).map(b" ".join)
lines = st.lists(st.one_of(line_bytes, word_line), min_size=1, max_size=6)
literal_case = st.tuples(
    st.lists(st.sampled_from(WORDS), max_size=6).map(b" ".join),
    st.binary(max_size=300),
    st.booleans(),
    st.binary(max_size=50).map(lambda b: b.replace(b"{", b"(").replace(b"}", b")")),
)


@pytest.fixture
async def env(make_env: Callable[..., AsyncIterator[Env]]) -> AsyncIterator[Env]:  # noqa: F811
    async for e in make_env(max_line_length=1024, max_literal_size=4096):
        yield e


async def _check_still_serving(env: Env, c: RawClient, sent: bytes) -> None:
    """Send the resync lines and read until one of the NOOPs answers OK."""
    await c.send_raw(b"\r\nDONE\r\n" + b"".join(s + b"\r\n" for s in _SYNC))
    while True:
        try:
            line = await asyncio.wait_for(c.read_response_line(), 10)
        except ConnectionError:
            # Logged out (or refused): the server must still serve a new connection.
            fresh = await env.client()
            await fresh.ok("NOOP")
            await fresh.close()
            return
        assert _RESPONSE.match(line) or line == b"", (sent, line)
        assert b"Traceback" not in line and b"Error:" not in line, (sent, line)
        if re.match(rb"^z\d OK", line):
            return
        if line.startswith(b"* BYE"):
            assert b"Internal error" not in line, (sent, line)


async def _fresh(env: Env, login: bool) -> RawClient:
    c = await env.client()
    if login:
        await c.ok("LOGIN alice secret")
    return c


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=lines, login=st.booleans(), select=st.booleans())
async def test_any_lines_get_answers_and_the_server_keeps_serving(
    env: Env, data: list[bytes], login: bool, select: bool
) -> None:
    c = await _fresh(env, login)
    try:
        if login and select:
            await c.ok("SELECT INBOX")
        payload = b"".join(line + b"\r\n" for line in data)
        await c.send_raw(payload)
        await _check_still_serving(env, c, payload)
    finally:
        await c.close()


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=literal_case)
async def test_literals_get_answers_and_the_server_keeps_serving(
    env: Env, case: tuple[bytes, bytes, bool, bytes]
) -> None:
    prefix, literal, plus, tail = case
    c = await _fresh(env, True)
    try:
        header = b"l1 " + prefix + b" {%d%s}\r\n" % (len(literal), b"+" if plus else b"")
        await c.send_raw(header)
        if not plus:
            # The server either asks for the literal or refuses the command at once.
            line = await asyncio.wait_for(c.read_response_line(), 10)
            assert _RESPONSE.match(line), (header, line)
            if not line.startswith(b"+"):
                await _check_still_serving(env, c, header)
                return
        await c.send_raw(literal + tail + b"\r\n")
        await _check_still_serving(env, c, header + literal + tail)
    finally:
        await c.close()
