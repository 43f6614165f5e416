"""Client-side IMAP load generators: a small, fast asyncio IMAP client over raw sockets.

Theory of operation
-------------------
``imaplib`` is synchronous and parses far too slowly to hold 1000 connections or to read
hundreds of MB per second, so the bench talks IMAP itself.  ``_ImapProtocol`` is an
``asyncio.Protocol`` that parses the server's byte stream inside ``data_received`` (no
coroutine step per line): it splits lines at CRLF; a line ending in ``{n}`` announces a
literal of ``n`` bytes, which is consumed straight from the received chunks (no copy into
the line buffer when the buffer is empty), and the response line goes on after it.  A
*logical response* (lines plus literals) is then one of:

- ``+ ...``: a continuation request; it wakes the oldest waiter for one (synchronizing
  literals when the server lacks LITERAL+);
- ``* ...``: untagged data; it belongs to the oldest command still in flight.  ``* n FETCH``
  responses become ``Body`` records (sequence number, UID, literal size, and depending on
  the command's ``LiteralMode`` the literal's SHA-256 or its bytes);
- ``<tag> OK|NO|BAD ...``: completes the command with that tag, stamped with
  ``time.perf_counter()`` when the line was parsed (so a latency does not include the
  client's own wake-up delay).

Commands may be pipelined: ``send()`` returns at once with a future, and
``append_many`` keeps a window of APPENDs in flight, using non-synchronizing literals
(``{n+}``, RFC 7888) when the server announces LITERAL+ and the ``+`` round trip otherwise.
Writes honour transport flow control (``pause_writing`` / ``resume_writing``).

``make_message`` builds deterministic messages of an exact size with CRLF line ends, so
that what a server returns for ``BODY[]`` can be compared byte for byte (by SHA-256) with
what was appended.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import hashlib
import random
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, cast

DEFAULT_TIMEOUT = 300.0
_LITERAL_AT_END = re.compile(rb"\{(\d+)\+?\}\Z")
_UID = re.compile(rb"\bUID (\d+)")
_FETCH = re.compile(rb"\* (\d+) FETCH ")
_CAPABILITY = re.compile(rb"\[CAPABILITY ([^\]]*)\]")
_APPENDUID = re.compile(rb"\[APPENDUID (\d+) (\d+)\]")
_EXISTS = re.compile(rb"\* (\d+) EXISTS")
# Receive buffer: small while idle (1000 idle connections), grown for big literals.
_INITIAL_BUFFER = 16 << 10
_MIN_READ = 4 << 10
_MAX_BUFFER = 1 << 20
_MAX_LINE = 16 << 20


class ImapError(Exception):
    """The server answered NO or BAD, closed the connection, or spoke nonsense."""


class LiteralMode(Enum):
    """What the client keeps of the literals in a command's untagged responses."""

    COUNT = "count"  # only the size: as cheap as reading can be
    SHA256 = "sha256"  # the size and a SHA-256 computed while the bytes stream in
    KEEP = "keep"  # the bytes themselves


@dataclass(slots=True)
class Body:
    """One literal of an untagged ``FETCH`` response (the ``BODY[]`` of a message)."""

    seq: int
    uid: int | None
    size: int
    sha256: str | None = None
    data: bytes | None = None


@dataclass(slots=True)
class Response:
    """The tagged completion of a command and the untagged data that came with it."""

    tag: bytes
    status: str
    text: str
    sent_at: float
    done_at: float
    untagged: list[bytes] = field(default_factory=list)
    bodies: list[Body] = field(default_factory=list)

    @property
    def latency(self) -> float:
        """Seconds from the command's last byte handed to the kernel to its tagged line."""
        return self.done_at - self.sent_at


@dataclass(slots=True)
class _Pending:
    tag: bytes
    mode: LiteralMode
    future: asyncio.Future[Response]
    sent_at: float = 0.0
    untagged: list[bytes] = field(default_factory=list)
    bodies: list[Body] = field(default_factory=list)


class _ImapProtocol(asyncio.BufferedProtocol):
    """Parses the server's stream into responses (see the module docstring)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.greeting: asyncio.Future[bytes] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.pending: collections.deque[_Pending] = collections.deque()
        self.by_tag: dict[bytes, _Pending] = {}
        self.continuations: collections.deque[asyncio.Future[bytes]] = collections.deque()
        self.unsolicited: list[bytes] = []
        self._buf = bytearray(_INITIAL_BUFFER)
        self._view = memoryview(self._buf)
        self._start = 0  # first unparsed byte
        self._end = 0  # end of the received bytes
        self._asked = 0  # free space offered by the last get_buffer()
        self._filled = False  # the last read filled all of it
        self._parts: list[bytes] = []  # text of the logical response so far
        self._lit_left = 0
        self._lit_size = 0
        self._lit_hash: Any = None
        self._lit_chunks: list[bytes] | None = None
        self._lits: list[tuple[int, str | None, bytes | None]] = []
        self._write_ready = asyncio.Event()
        self._write_ready.set()
        self.error: BaseException | None = None

    # -- transport callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        err = ConnectionError(f"connection closed by the server ({exc or 'EOF'})")
        self.error = err
        self._write_ready.set()
        if not self.greeting.done():
            self.greeting.set_exception(err)
        for p in self.pending:
            if not p.future.done():
                p.future.set_exception(err)
        self.pending.clear()
        self.by_tag.clear()
        for c in self.continuations:
            if not c.done():
                c.set_exception(err)
        self.continuations.clear()
        if not self.closed.done():
            self.closed.set_result(None)
        # Retrieve the exceptions nobody may wait for any more (no "never retrieved" logs).
        with contextlib.suppress(BaseException):
            self.greeting.exception()

    def pause_writing(self) -> None:
        self._write_ready.clear()

    def resume_writing(self) -> None:
        self._write_ready.set()

    async def drain(self) -> None:
        """Wait until the transport's write buffer is below its high-water mark."""
        await self._write_ready.wait()
        if self.error is not None:
            raise self.error

    def get_buffer(self, sizehint: int) -> memoryview:
        size = len(self._buf)
        target = size
        if self._filled:  # the last read filled the buffer: the server is ahead of us
            target = min(2 * size, _MAX_BUFFER)
        if self._lit_left > target:
            target = min(self._lit_left, _MAX_BUFFER)
        if size - self._end < _MIN_READ:
            if self._start:
                # Move the unparsed tail (a partial line) to the front.
                rest = bytes(self._view[self._start : self._end])
                self._view[: len(rest)] = rest
                self._start, self._end = 0, len(rest)
            if size - self._end < _MIN_READ:  # a line longer than the buffer
                target = max(target, 2 * size)
        if target > size:
            self._view.release()
            grown = bytearray(target)
            grown[: self._end] = self._buf[: self._end]
            self._buf = grown
            self._view = memoryview(grown)
        self._asked = len(self._buf) - self._end
        return self._view[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        self._end += nbytes
        self._filled = nbytes >= self._asked
        try:
            self._parse()
        except Exception as e:  # a protocol violation: fail everything, drop the link
            self.error = ImapError(f"cannot parse the server's response: {e!r}")
            if self.transport is not None:
                self.transport.abort()

    def eof_received(self) -> bool | None:
        return None

    # -- parsing

    def _parse(self) -> None:
        buf, view = self._buf, self._view
        pos, end = self._start, self._end
        while pos < end:
            if self._lit_left:
                take = min(end - pos, self._lit_left)
                self._lit_left -= take
                if self._lit_hash is not None:
                    with view[pos : pos + take] as chunk:
                        self._lit_hash.update(chunk)
                elif self._lit_chunks is not None:
                    self._lit_chunks.append(bytes(view[pos : pos + take]))
                pos += take
                if self._lit_left == 0:
                    self._literal_end()
                continue
            nl = buf.find(b"\r\n", pos, end)
            if nl < 0:
                break
            line = bytes(view[pos:nl])
            pos = nl + 2
            self._line(line)
        if pos >= end:
            pos = end = 0
            self._end = 0
        self._start = pos

    def _mode(self) -> LiteralMode:
        return self.pending[0].mode if self.pending else LiteralMode.KEEP

    def _literal_end(self) -> None:
        digest = self._lit_hash.hexdigest() if self._lit_hash is not None else None
        data = b"".join(self._lit_chunks) if self._lit_chunks is not None else None
        self._lits.append((self._lit_size, digest, data))
        self._lit_hash = None
        self._lit_chunks = None

    def _line(self, line: bytes) -> None:
        m = _LITERAL_AT_END.search(line) if line.endswith(b"}") else None
        if m is not None:
            self._parts.append(line)
            size = int(m.group(1))
            self._lit_left = self._lit_size = size
            mode = self._mode()
            self._lit_hash = hashlib.sha256() if mode is LiteralMode.SHA256 else None
            self._lit_chunks = [] if mode is LiteralMode.KEEP else None
            if size == 0:
                self._literal_end()
            return
        parts, self._parts = self._parts, []
        parts.append(line)
        lits, self._lits = self._lits, []
        first = parts[0]
        if first.startswith(b"* "):
            self._untagged(first, parts, lits)
        elif first.startswith(b"+"):
            if self.continuations:
                fut = self.continuations.popleft()
                if not fut.done():
                    fut.set_result(first)
            else:
                raise ImapError(f"unexpected continuation request {first[:80]!r}")
        else:
            self._tagged(first, parts)

    def _untagged(
        self, first: bytes, parts: list[bytes], lits: list[tuple[int, str | None, bytes | None]]
    ) -> None:
        if not self.greeting.done():
            self.greeting.set_result(first)
            return
        if not self.pending:
            self.unsolicited.append(b"".join(parts))
            return
        p = self.pending[0]
        m = _FETCH.match(first)
        if m is not None and lits:
            text = b" ".join(parts)
            um = _UID.search(text)
            uid = int(um.group(1)) if um else None
            seq = int(m.group(1))
            for size, digest, data in lits:
                p.bodies.append(Body(seq, uid, size, digest, data))
            return
        if lits and p.mode is LiteralMode.KEEP:
            joined = b"".join(
                part + (lits[i][2] or b"") if i < len(lits) else part
                for i, part in enumerate(parts)
            )
            p.untagged.append(joined)
        else:
            p.untagged.append(b"".join(parts))

    def _tagged(self, first: bytes, parts: list[bytes]) -> None:
        now = time.perf_counter()
        tag, _, rest = first.partition(b" ")
        p = self.by_tag.pop(tag, None)
        if p is None:
            raise ImapError(f"tagged response for an unknown tag: {first[:80]!r}")
        with contextlib.suppress(ValueError):
            self.pending.remove(p)
        status, _, text = rest.partition(b" ")
        if not p.future.done():
            p.future.set_result(
                Response(
                    tag,
                    status.decode("ascii", "replace").upper(),
                    text.decode("utf-8", "replace"),
                    p.sent_at,
                    now,
                    p.untagged,
                    p.bodies,
                )
            )


def quote(s: str) -> bytes:
    """An IMAP quoted string (RFC 3501 ``quoted``): backslash and DQUOTE escaped."""
    if any(c in s for c in "\r\n\0"):
        raise ValueError("a quoted string cannot hold CR, LF or NUL")
    return b'"' + s.replace("\\", "\\\\").replace('"', '\\"').encode("utf-8") + b'"'


@dataclass(slots=True)
class FetchResult:
    """What one ``UID FETCH ... BODY.PEEK[]`` returned, and how long it took."""

    bodies: list[Body]
    seconds: float

    @property
    def nbytes(self) -> int:
        """Sum of the body literals' sizes."""
        return sum(b.size for b in self.bodies)


class ImapClient:
    """One IMAP connection (see the module docstring).  Not thread-safe; one event loop."""

    def __init__(self, proto: _ImapProtocol, timeout: float) -> None:
        self._p = proto
        self._tags = 0
        self.timeout = timeout
        self.capabilities: set[str] = set()

    @classmethod
    async def connect(cls, host: str, port: int, *, timeout: float = DEFAULT_TIMEOUT) -> ImapClient:
        """Connect, wait for the greeting (``* OK``) and learn its capabilities.

        Raises:
            ImapError: the greeting is not ``* OK`` (``* BYE``: the server refused).
            OSError: the connection failed.
        """
        loop = asyncio.get_running_loop()
        _, proto = await asyncio.wait_for(
            loop.create_connection(lambda: _ImapProtocol(loop), host, port), timeout
        )
        client = cls(proto, timeout)
        try:
            greeting = await asyncio.wait_for(asyncio.shield(proto.greeting), timeout)
        except BaseException:
            client.abort()
            raise
        if not greeting.startswith(b"* OK"):
            client.abort()
            raise ImapError(f"refused: {greeting[:200]!r}")
        client._learn_capabilities(greeting)
        return client

    # -- plumbing

    def _learn_capabilities(self, text: bytes) -> None:
        m = _CAPABILITY.search(text)
        if m:
            self.capabilities = {c.upper() for c in m.group(1).decode("ascii").split()}

    def _next_tag(self) -> bytes:
        self._tags += 1
        return b"T%d" % self._tags

    def _register(self, mode: LiteralMode) -> _Pending:
        if self._p.error is not None:
            raise self._p.error
        fut: asyncio.Future[Response] = self._p.loop.create_future()
        p = _Pending(self._next_tag(), mode, fut)
        self._p.pending.append(p)
        self._p.by_tag[p.tag] = p
        return p

    def _write(self, *chunks: bytes) -> None:
        t = self._p.transport
        if t is None or t.is_closing():
            raise self._p.error or ConnectionError("the connection is closed")
        t.writelines(chunks)

    def send(
        self, command: bytes, mode: LiteralMode = LiteralMode.KEEP
    ) -> asyncio.Future[Response]:
        """Send ``<tag> command`` (no literals in it) without waiting; returns the future."""
        p = self._register(mode)
        self._write(p.tag, b" ", command, b"\r\n")
        p.sent_at = time.perf_counter()
        return p.future

    async def wait(self, fut: asyncio.Future[Response], *, check: bool = True) -> Response:
        """Await a command's completion; with ``check``, NO/BAD raise ``ImapError``."""
        resp = await asyncio.wait_for(fut, self.timeout)
        if check and resp.status != "OK":
            raise ImapError(f"{resp.status} {resp.text}")
        return resp

    async def command(
        self, command: bytes | str, mode: LiteralMode = LiteralMode.KEEP, *, check: bool = True
    ) -> Response:
        """Send a command and await its tagged response."""
        if isinstance(command, str):
            command = command.encode("utf-8")
        fut = self.send(command, mode)
        await self._p.drain()
        return await self.wait(fut, check=check)

    # -- commands

    async def capability(self) -> set[str]:
        """``CAPABILITY``; also updates ``capabilities``."""
        resp = await self.command(b"CAPABILITY")
        for line in resp.untagged:
            if line.upper().startswith(b"* CAPABILITY "):
                self.capabilities = {c.upper() for c in line[13:].decode("ascii").split()}
        return self.capabilities

    async def login(self, user: str, password: str) -> Response:
        """``LOGIN "user" "password"`` (quoted strings)."""
        resp = await self.command(b"LOGIN " + quote(user) + b" " + quote(password))
        self._learn_capabilities(resp.text.encode("utf-8", "replace"))
        return resp

    async def select(self, mailbox: str = "INBOX") -> int:
        """``SELECT``; returns the EXISTS count."""
        resp = await self.command(b"SELECT " + quote(mailbox))
        for line in resp.untagged:
            m = _EXISTS.match(line)
            if m:
                return int(m.group(1))
        raise ImapError("SELECT answered without an EXISTS count")

    async def noop(self) -> float:
        """``NOOP``; returns its latency in seconds (send to tagged line)."""
        return (await self.command(b"NOOP")).latency

    async def logout(self) -> None:
        """``LOGOUT`` and close (errors on the way out are ignored)."""
        try:
            if self._p.error is None:
                await self.command(b"LOGOUT", check=False)
        except (TimeoutError, ImapError, OSError):
            pass
        finally:
            self.abort()

    def abort(self) -> None:
        """Close the socket at once."""
        if self._p.transport is not None:
            self._p.transport.abort()

    async def closed(self) -> None:
        """Wait until the connection is gone."""
        await self._p.closed

    @property
    def literal_plus(self) -> bool:
        """True when the server announced LITERAL+ (RFC 7888)."""
        return "LITERAL+" in self.capabilities

    async def _send_append(self, mailbox: bytes, message: bytes) -> asyncio.Future[Response]:
        if self.literal_plus:
            p = self._register(LiteralMode.KEEP)
            self._write(p.tag, b" APPEND ", mailbox, b" {%d+}\r\n" % len(message), message, b"\r\n")
            p.sent_at = time.perf_counter()
            return p.future
        cont: asyncio.Future[bytes] = self._p.loop.create_future()
        self._p.continuations.append(cont)
        p = self._register(LiteralMode.KEEP)
        self._write(p.tag, b" APPEND ", mailbox, b" {%d}\r\n" % len(message))
        done, _ = await asyncio.wait(
            {cont, p.future}, timeout=self.timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if cont in done:
            cont.result()
            self._write(message, b"\r\n")
            p.sent_at = time.perf_counter()
        else:
            with contextlib.suppress(ValueError):
                self._p.continuations.remove(cont)
            cont.cancel()
            if not done:
                raise TimeoutError("no continuation request for APPEND")
        return p.future

    async def append(self, mailbox: str, message: bytes) -> Response:
        """``APPEND`` one message; returns the tagged OK (with ``[APPENDUID ...]``)."""
        fut = await self._send_append(quote(mailbox), message)
        await self._p.drain()
        return await self.wait(fut)

    async def append_many(
        self, mailbox: str, messages: Iterable[bytes], window: int = 8
    ) -> list[Response]:
        """APPEND every message, keeping up to ``window`` commands in flight (pipelined
        with ``{n+}`` literals when the server has LITERAL+).  Returns the responses in
        order; raises ``ImapError`` on the first NO/BAD."""
        if window < 1:
            raise ValueError("window must be >= 1")
        mbox = quote(mailbox)
        inflight: collections.deque[asyncio.Future[Response]] = collections.deque()
        out: list[Response] = []
        for msg in messages:
            if len(inflight) >= window:
                out.append(await self.wait(inflight.popleft()))
            inflight.append(await self._send_append(mbox, msg))
            await self._p.drain()
        while inflight:
            out.append(await self.wait(inflight.popleft()))
        return out

    async def fetch_bodies(
        self, uid_set: str = "1:*", mode: LiteralMode = LiteralMode.COUNT
    ) -> FetchResult:
        """``UID FETCH <set> (BODY.PEEK[])``: one ``Body`` per message, timed from send to
        the tagged OK."""
        t0 = time.perf_counter()
        resp = await self.command(f"UID FETCH {uid_set} (BODY.PEEK[])", mode)
        return FetchResult(resp.bodies, resp.done_at - t0)


# ---------------------------------------------------------------------------------------
# Messages and checks


def make_message(index: int, size: int, seed: str = "bench") -> bytes:
    """A deterministic RFC 5322 message of exactly ``size`` bytes with CRLF line ends
    (76-character base64 lines after a few headers); distinct for each (seed, index)."""
    header = (
        "From: Bench Sender <sender@bench.example>\r\n"
        "To: Bench User <user@bench.example>\r\n"
        f"Subject: bench message {seed} {index}\r\n"
        f"Message-ID: <{seed}.{index}@bench.example>\r\n"
        "Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n"
        "\r\n"
    ).encode("ascii")
    room = size - len(header)
    if room < 2:
        raise ValueError(f"a message needs at least {len(header) + 2} bytes")
    rnd = random.Random(f"{seed}:{index}")
    raw = base64.b64encode(rnd.randbytes(room * 3 // 4 + 3))
    lines = b"\r\n".join(raw[i : i + 76] for i in range(0, len(raw), 76))
    body = lines[: room - 2]
    if body.endswith(b"\r"):
        body = body[:-1] + b"A"
    msg = header + body + b"\r\n"
    assert len(msg) == size
    return msg


@dataclass(slots=True)
class MessageSet:
    """``count`` messages of ``size`` bytes from one seed, and their digests."""

    count: int
    size: int
    seed: str

    def messages(self) -> Iterable[bytes]:
        """Generate the messages (one at a time: 200 MiB need not sit in memory)."""
        for i in range(self.count):
            yield make_message(i, self.size, self.seed)

    def digests(self) -> collections.Counter[tuple[int, str]]:
        """The multiset of (size, sha256) of the messages."""
        return collections.Counter((len(m), hashlib.sha256(m).hexdigest()) for m in self.messages())


def check_bodies(
    bodies: Sequence[Body], expected: collections.Counter[tuple[int, str]]
) -> str | None:
    """Compare fetched bodies (fetched with ``LiteralMode.SHA256``) with the expected
    multiset of (size, sha256); returns None when equal, else what differs."""
    got = collections.Counter((b.size, b.sha256 or "") for b in bodies)
    if got == expected:
        return None
    missing = sum((expected - got).values())
    extra = sum((got - expected).values())
    return (
        f"fetched {len(bodies)} bodies, expected {sum(expected.values())}: "
        f"{missing} expected ones missing or different, {extra} unexpected"
    )


async def open_session(
    host: str,
    port: int,
    user: str,
    password: str,
    mailbox: str | None = "INBOX",
    *,
    timeout: float = DEFAULT_TIMEOUT,
) -> tuple[ImapClient, int]:
    """Connect, LOGIN and (unless ``mailbox`` is None) SELECT; returns (client, EXISTS)."""
    client = await ImapClient.connect(host, port, timeout=timeout)
    try:
        await client.login(user, password)
        exists = await client.select(mailbox) if mailbox is not None else 0
    except BaseException:
        client.abort()
        raise
    return client, exists


async def populate(
    host: str,
    port: int,
    user: str,
    password: str,
    messages: Iterable[bytes],
    *,
    mailbox: str = "INBOX",
    window: int = 16,
) -> int:
    """APPEND all messages over one connection (pipelined); returns how many."""
    client, _ = await open_session(host, port, user, password, None)
    try:
        if mailbox.upper() != "INBOX":
            await client.command(b"CREATE " + quote(mailbox), check=False)
        return len(await client.append_many(mailbox, messages, window))
    finally:
        await client.logout()


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-quantile (0..1) by linear interpolation between closest ranks."""
    if not values:
        raise ValueError("no values")
    s = sorted(values)
    k = (len(s) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


async def noop_loop(
    client: ImapClient,
    stop: asyncio.Event,
    interval: float,
    out: list[float],
    *,
    phase: float = 0.0,
) -> None:
    """NOOP every ``interval`` seconds (after ``phase``) until ``stop``; latencies (s) are
    appended to ``out``.  A NOOP that takes longer than the interval delays the next one
    (no catch-up burst)."""
    loop = asyncio.get_running_loop()
    next_at = loop.time() + phase
    while not stop.is_set():
        delay = next_at - loop.time()
        if delay > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            if stop.is_set():
                break
        out.append(await client.noop())
        next_at = max(next_at + interval, loop.time())


async def fetch_loop(
    client: ImapClient, stop: asyncio.Event, uid_set: str = "1:*"
) -> tuple[int, int, float]:
    """FETCH ``BODY.PEEK[]`` of ``uid_set`` again and again until ``stop`` (checked between
    commands); returns (messages, bytes, seconds)."""
    t0 = time.perf_counter()
    n = nbytes = 0
    while not stop.is_set():
        res = await client.fetch_bodies(uid_set, LiteralMode.COUNT)
        n += len(res.bodies)
        nbytes += res.nbytes
    return n, nbytes, time.perf_counter() - t0


# ---------------------------------------------------------------------------------------
# A load generator in its own process


async def _fetch_loop_main(host: str, port: int, user: str, password: str, uid_set: str) -> None:
    """Log in, SELECT INBOX, print ``ready``, FETCH in a loop until stdin closes, then print
    one JSON line: messages, bytes, seconds."""
    import json
    import sys
    import threading

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def wait_stdin() -> None:
        sys.stdin.buffer.read()
        loop.call_soon_threadsafe(stop.set)

    client, _ = await open_session(host, port, user, password)
    threading.Thread(target=wait_stdin, daemon=True).start()
    print("ready", flush=True)
    n, nbytes, seconds = await fetch_loop(client, stop, uid_set)
    await client.logout()
    print(json.dumps({"messages": n, "bytes": nbytes, "seconds": seconds}), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """``python imap_load.py fetch-loop HOST PORT USER PASSWORD [UID-SET]``: a FETCH load
    in its own process (so that it does not share an event loop with what it disturbs)."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch-loop", help="UID FETCH <set> (BODY.PEEK[]) until stdin closes")
    f.add_argument("host")
    f.add_argument("port", type=int)
    f.add_argument("user")
    f.add_argument("password")
    f.add_argument("uid_set", nargs="?", default="1:*")
    args = ap.parse_args(argv)
    if args.host not in ("127.0.0.1", "::1", "localhost"):
        ap.error("only 127.0.0.1, ::1 or localhost")
    coro = _fetch_loop_main(args.host, args.port, args.user, args.password, args.uid_set)
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
