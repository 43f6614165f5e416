"""The LMTP server (RFC 2033) on aiosmtpd, streaming each message into its recipients'
deliveries as it arrives.

Theory of operation
-------------------
aiosmtpd gives the connection handling, the command loop (line reading, dispatch,
command length limits, the bogus-command budget, the idle timeout) and the simple
commands (RSET, NOOP, QUIT, VRFY, HELP).  :class:`LmtpSession` replaces what LMTP and this
store need differently:

* ``LHLO`` announces ``8BITMIME``, ``ENHANCEDSTATUSCODES``, ``PIPELINING`` and
  ``SIZE <max>``; every later reply carries an RFC 3463 status code (:meth:`push` adds
  one to aiosmtpd's own replies that lack it).
* ``MAIL FROM`` refuses ``SIZE=`` above the limit (``552 5.3.4``) before any data is sent.
* ``RCPT TO`` asks the :class:`~aiodbox.lmtp.delivery.Delivery` hook for the user:
  unknown → ``550 5.1.1``, lookup failure → ``451 4.3.0``; other recipients are not
  affected.  Two RCPTs that name the same user share one delivery (stored once) and get
  the same reply.
* ``DATA`` never holds the message.  Each distinct user gets a delivery task reading a
  :class:`_Pipe`, a bounded byte queue (``PIPE_BUFFER`` bytes); the DATA loop takes
  whatever the socket delivered, undoes dot-stuffing with the sans-IO
  :class:`~aiodbox.lmtp.data.DotDecoder`, and hands the bytes to every pipe (bytes
  pipelined after the final dot go back to the reader for the command loop).  A slow
  store slows the reading down (back-pressure to the client through TCP), so memory per
  transaction stays about ``recipients x (PIPE_BUFFER + one socket read)``.  The trace
  headers (Dovecot's: see :mod:`aiodbox.lmtp.trace`) are the first chunk.
* When the data passes the size limit every pipe is aborted: the deliveries' save
  transactions roll back, the rest of the data is read and dropped, and each recipient
  gets ``552 5.3.4``.  When the client goes away mid-DATA the pipes are aborted the same
  way, so nothing half-received is ever stored.
* After the final dot the deliveries finish (they commit on end of stream) and each
  accepted RCPT gets its own reply, in RCPT order (RFC 2033 §4.2).  A delivery that
  failed temporarily gets ``451``: the MTA retries that recipient only.

:class:`LmtpServer` owns the listening sockets and the sessions: ``shutdown`` stops
accepting, lets commands in flight (a DATA and its deliveries) finish, answers ``421``
and closes every connection.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Sequence
from typing import Any, AnyStr

from aiosmtpd.lmtp import LMTP

from aiodbox import metrics
from aiodbox.config import parse_listen
from aiodbox.lmtp.data import DotDecoder
from aiodbox.lmtp.delivery import Delivery, DeliveryEnvelope, DeliveryError
from aiodbox.lmtp.trace import trace_headers

log = logging.getLogger("aiodbox.lmtp")

PIPE_BUFFER = 256 << 10
"""Bytes buffered per recipient before the DATA loop waits for its delivery."""
READ_ALL = 1 << 30
"""A read size larger than the reader can ever buffer: a DATA read empties it."""
MAX_RECIPIENTS = 1000
"""RCPTs accepted per transaction (``452 4.5.3`` beyond)."""
READ_LIMIT = 64 << 10
"""The stream reader's line limit (longer DATA lines are read in pieces)."""

_ENHANCED = {2: "2.0.0", 4: "4.0.0", 5: "5.5.0"}
_ENHANCED_BY_CODE = {
    500: "5.5.2",
    501: "5.5.4",
    502: "5.5.1",
    503: "5.5.1",
    504: "5.5.4",
    552: "5.3.4",
    555: "5.5.4",
}


def _has_status(text: bytes) -> bool:
    """True if a reply line already carries an enhanced status code ``d.ddd.ddd``."""
    parts = text[4:].split(b" ", 1)[0].split(b".")
    return len(parts) == 3 and all(p.isdigit() and 0 < len(p) <= 3 for p in parts)


def _new_session_id() -> str:
    """16 random bytes in base64 without padding (Dovecot's 22-character session ids)."""
    return base64.b64encode(os.urandom(16)).rstrip(b"=").decode()


class _Aborted(Exception):
    """The DATA stream was abandoned (size limit, client gone): store nothing."""


class _Pipe:
    """A bounded byte queue from the DATA loop to one delivery; see the module docstring.

    The DATA loop calls :meth:`send` (waits while more than ``limit`` bytes are
    queued), then :meth:`close` or :meth:`abort`; the delivery iterates the pipe.
    """

    def __init__(self, limit: int = PIPE_BUFFER) -> None:
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._limit = limit
        self._eof = False
        self._error: BaseException | None = None
        self._gone = False
        self._data_ready: asyncio.Future[None] | None = None
        self._room: asyncio.Future[None] | None = None

    @staticmethod
    def _wake(fut: asyncio.Future[None] | None) -> None:
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def send(self, chunk: bytes) -> None:
        """Queue ``chunk``; wait while the reader is ``limit`` bytes behind."""
        if self._gone or self._eof or self._error is not None or not chunk:
            return
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        self._wake(self._data_ready)
        while self._buffered > self._limit and not self._gone:
            self._room = asyncio.get_running_loop().create_future()
            await self._room

    def close(self) -> None:
        """End of data: the reader's iteration ends after the queued chunks."""
        self._eof = True
        self._wake(self._data_ready)

    def abort(self, error: BaseException) -> None:
        """Drop what is queued; the reader's next step raises ``error``."""
        self._error = error
        self._chunks.clear()
        self._buffered = 0
        self._wake(self._data_ready)

    def consumer_done(self) -> None:
        """The delivery stopped reading (finished or failed): sends become no-ops."""
        self._gone = True
        self._chunks.clear()
        self._buffered = 0
        self._wake(self._room)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        while True:
            if self._error is not None:
                raise self._error
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._buffered <= self._limit:
                    self._wake(self._room)
                return chunk
            if self._eof:
                raise StopAsyncIteration
            self._data_ready = asyncio.get_running_loop().create_future()
            await self._data_ready


class _Hooks:
    """aiosmtpd's event handler: only its exception hook is used (the rest is overridden)."""

    async def handle_exception(self, error: Exception) -> str:
        log.error("lmtp: internal error: %r", error, exc_info=error)
        return "451 4.3.0 Internal error"


class LmtpSession(LMTP):
    """One LMTP connection; see the module docstring."""

    line_length_limit = READ_LIMIT

    def __init__(self, server: LmtpServer, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(
            _Hooks(),
            data_size_limit=None,
            hostname=server.hostname,
            ident="aiodbox ready.",
            timeout=server.timeout,
            loop=loop,
        )
        self.server = server
        # aiosmtpd keeps these limits in a dict shared by the class; keep ours apart.
        self.command_size_limits = collections.defaultdict(lambda: 512, {"MAIL": 512 + 26})
        self.session_id = _new_session_id()
        self.busy = False
        self._transactions = 0
        self._rcpts: list[tuple[str, str]] = []  # (address, user) of each accepted RCPT
        self._mail_from: str | None = None
        self._size: int | None = None
        self._last_code = ""
        self._bytes_out = 0
        self._bytes_in = 0
        self._user = "-"
        # Wrap every command for the per-command log line, metrics and shutdown.
        self._smtp_methods = {
            name: self._instrumented(name, method) for name, method in self._smtp_methods.items()
        }

    # ------------------------------------------------------------- plumbing

    def _remote_ip(self) -> str | None:
        peer: Any = self.session.peer if self.session is not None else None
        if isinstance(peer, tuple) and peer:
            return str(peer[0])
        return None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None
        super().connection_made(transport)
        if first:
            self.server._sessions.add(self)
            metrics.connection("lmtp", 1)

    def connection_lost(self, error: Exception | None) -> None:
        if self in self.server._sessions:
            self.server._sessions.discard(self)
            metrics.connection("lmtp", -1)
        super().connection_lost(error)

    def _set_post_data_state(self) -> None:
        super()._set_post_data_state()  # type: ignore[no-untyped-call]
        self._rcpts = []
        self._mail_from = None
        self._size = None

    async def push(self, status: AnyStr) -> None:
        """Send one reply line, adding an enhanced status code where it lacks one."""
        raw = status.encode("utf-8", "surrogateescape") if isinstance(status, str) else status
        code = raw[:3]
        extended = self.session is not None and self.session.host_name is not None
        if (
            extended
            and code.isdigit()
            and code not in (b"220", b"354")
            and raw[3:4] in (b" ", b"-")
            and not _has_status(raw)
        ):
            n = int(code)
            status_code = _ENHANCED_BY_CODE.get(n) or _ENHANCED.get(n // 100)
            if status_code is not None:
                raw = raw[:4] + status_code.encode() + b" " + raw[4:]
        self._last_code = code.decode("ascii", "replace")
        self._bytes_out += len(raw) + 2
        await super().push(raw)

    def _instrumented(
        self, name: str, method: Callable[[str | None], Coroutine[Any, Any, None]]
    ) -> Callable[[str | None], Coroutine[Any, Any, None]]:
        async def run(arg: str | None) -> None:
            self.busy = True
            self._last_code = ""
            self._bytes_out = 0
            self._bytes_in = len(name) + 2 + (len(arg) + 1 if arg else 0)
            self._user = "-"
            start = time.perf_counter()
            try:
                await method(arg)
            finally:
                self.busy = False
                seconds = time.perf_counter() - start
                result = self._last_code or "-"
                metrics.command("lmtp", name, seconds, result)
                metrics.transferred("lmtp", "in", self._bytes_in)
                metrics.transferred("lmtp", "out", self._bytes_out)
                # The same fields as the IMAP server's line (the logger name tells them apart).
                log.info(
                    "user=%s ip=%s cmd=%s result=%s ms=%.2f in=%d out=%d",
                    self._user,
                    self._remote_ip() or "-",
                    name,
                    result,
                    seconds * 1000,
                    self._bytes_in,
                    self._bytes_out,
                )
            if self.server.closing:
                self.say_goodbye()

        return run

    def say_goodbye(self) -> None:
        """Answer ``421`` and close (server shutdown): between commands only."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        try:
            self._writer.write(f"421 4.3.2 {self.hostname} Shutting down\r\n".encode())
        except (RuntimeError, OSError):
            pass
        transport.close()

    async def _reply(self, text: str) -> None:
        await self.push(text)

    # ------------------------------------------------------------- commands

    async def smtp_LHLO(self, arg: str) -> None:
        """The LMTP greeting: capabilities, one per line."""
        if not arg:
            await super().push("501 Syntax: LHLO hostname")
            return
        self._set_rset_state()  # type: ignore[no-untyped-call]
        assert self.session is not None
        self.session.extended_smtp = True
        self.session.host_name = arg
        self._user = "-"
        lines = [
            self.hostname,
            "8BITMIME",
            "ENHANCEDSTATUSCODES",
            "PIPELINING",
            f"SIZE {self.server.max_message_size}",
        ]
        self._last_code = "250"
        for i, line in enumerate(lines):
            sep = " " if i == len(lines) - 1 else "-"
            data = f"250{sep}{line}".encode()
            self._bytes_out += len(data) + 2
            await super().push(data)

    async def smtp_MAIL(self, arg: str | None) -> None:
        """``MAIL FROM:<path> [SIZE=n] [BODY=7BIT|8BITMIME]``."""
        if await self.check_helo_needed("LHLO"):
            return
        syntax = "501 5.5.4 Syntax: MAIL FROM:<address> [SIZE=n] [BODY=7BIT|8BITMIME]"
        if self._mail_from is not None:
            await self._reply("503 5.5.1 MAIL already given")
            return
        text = self._strip_command_keyword("FROM:", arg) if arg else None
        if text is None:
            await self._reply(syntax)
            return
        address, rest = self._getaddr(text)
        if not address or rest is None:
            await self._reply("501 5.1.7 Invalid sender address")
            return
        params = self._getparams(rest.upper().split())
        if params is None:
            await self._reply(syntax)
            return
        body = params.pop("BODY", "7BIT")
        if body not in ("7BIT", "8BITMIME"):
            await self._reply("501 5.5.4 BODY can only be 7BIT or 8BITMIME")
            return
        size: int | None = None
        if "SIZE" in params:
            value = params.pop("SIZE")
            if not isinstance(value, str) or not value.isdigit():
                await self._reply("501 5.5.4 Invalid SIZE parameter")
                return
            size = int(value)
            if size > self.server.max_message_size:
                await self._reply("552 5.3.4 Message size exceeds fixed maximum message size")
                return
        if params:
            await self._reply("555 5.5.4 Unsupported parameters")
            return
        self._mail_from = "" if address == "<>" else address
        self._size = size
        assert self.envelope is not None
        self.envelope.mail_from = self._mail_from
        await self._reply("250 2.1.0 OK")

    async def smtp_RCPT(self, arg: str | None) -> None:
        """``RCPT TO:<address>``: the user must exist (asked of the delivery hook)."""
        if await self.check_helo_needed("LHLO"):
            return
        if self._mail_from is None:
            await self._reply("503 5.5.1 MAIL needed first")
            return
        text = self._strip_command_keyword("TO:", arg) if arg else None
        if text is None:
            await self._reply("501 5.5.4 Syntax: RCPT TO:<address>")
            return
        address, rest = self._getaddr(text)
        if not address or address == "<>" or rest is None:
            await self._reply("501 5.1.3 Invalid recipient address")
            return
        if rest.strip():
            await self._reply("555 5.5.4 Unsupported parameters")
            return
        if len(self._rcpts) >= MAX_RECIPIENTS:
            await self._reply("452 4.5.3 Too many recipients")
            return
        try:
            user = await self.server.delivery.resolve(address)
        except DeliveryError as e:
            await self._reply(f"{e.code} {e.status} <{address}> {e.text}")
            return
        except Exception:
            log.exception("lmtp: looking up %r failed", address)
            await self._reply(f"451 4.3.0 <{address}> Temporary user lookup failure")
            return
        if user is None:
            await self._reply(f"550 5.1.1 <{address}> User doesn't exist: {address}")
            return
        self._user = user
        self._rcpts.append((address, user))
        assert self.envelope is not None
        self.envelope.rcpt_tos.append(address)
        await self._reply("250 2.1.5 OK")

    async def smtp_VRFY(self, arg: str) -> None:
        """Not offered (recipient probing): ``252`` as RFC 5321 allows."""
        await self._reply(
            "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery"
        )

    async def smtp_DATA(self, arg: str) -> None:
        """Stream the message into every recipient's delivery; one reply per RCPT."""
        if await self.check_helo_needed("LHLO"):
            return
        if self._mail_from is None:
            await self._reply("503 5.5.1 MAIL needed first")
            return
        if not self._rcpts:
            await self._reply("503 5.5.1 No valid recipients")
            return
        if arg:
            await self._reply("501 5.5.4 Syntax: DATA")
            return
        await super().push(b"354 OK")
        self._bytes_out += 8
        rcpts = list(self._rcpts)
        try:
            await self._transaction(rcpts)
        finally:
            self._set_post_data_state()

    async def _transaction(self, rcpts: list[tuple[str, str]]) -> None:
        self._transactions += 1
        tid = self.session_id
        if self._transactions > 1:
            tid = f"{tid}:T{self._transactions}"
        mail_from = self._mail_from or ""
        addresses = list(dict.fromkeys(a for a, _ in rcpts))
        users: dict[str, str] = {}
        for address, user in rcpts:
            users.setdefault(user, address)
        self._user = ",".join(users)
        assert self.session is not None
        prefix = trace_headers(
            mail_from=mail_from,
            recipients=addresses,
            helo=self.session.host_name,
            remote_ip=self._remote_ip(),
            hostname=self.hostname,
            transaction_id=tid,
        )
        size_hint = None if self._size is None else self._size + len(prefix)
        pipes: dict[str, _Pipe] = {}
        tasks: dict[str, asyncio.Task[str]] = {}
        for user, address in users.items():
            pipe = _Pipe()
            envelope = DeliveryEnvelope(mail_from, address, tid, size_hint)
            pipes[user] = pipe
            tasks[user] = asyncio.get_running_loop().create_task(
                self._deliver_one(user, pipe, envelope), name=f"lmtp-deliver-{user}"
            )
        for pipe in pipes.values():
            await pipe.send(prefix)
        try:
            too_big = await self._read_data(list(pipes.values()))
        except BaseException:
            for pipe in pipes.values():
                pipe.abort(_Aborted("the client went away during DATA"))
            # Let the deliveries roll back in the background; this task is going away.
            self.server._keep(asyncio.gather(*tasks.values(), return_exceptions=True))
            raise
        outcome = self.server._keep(asyncio.gather(*tasks.values(), return_exceptions=True))
        # Shielded: a client that drops now must not cancel commits under way.
        results = dict(zip(tasks, await asyncio.shield(outcome), strict=True))
        replies: dict[str, str] = {}
        for user, address in users.items():
            replies[user] = self._outcome(user, address, results[user], too_big, tid)
        for address, user in rcpts:
            text = replies[user]
            if text.startswith("250"):
                text = f"250 2.0.0 <{address}> {tid} Saved"
            elif not too_big:
                code, status, rest = text.split(" ", 2)
                text = f"{code} {status} <{address}> {rest}"
            await self._reply(text)

    def _outcome(
        self, user: str, address: str, result: str | BaseException, too_big: bool, tid: str
    ) -> str:
        if too_big:
            metrics.delivery("too_big")
            return "552 5.3.4 Message size exceeds fixed maximum message size"
        if isinstance(result, str):
            metrics.delivery("ok")
            log.info(
                "lmtp: delivered id=%s from=<%s> to=<%s> user=%s: %s",
                tid,
                self._mail_from or "",
                address,
                user,
                result,
            )
            return "250"
        if isinstance(result, DeliveryError):
            metrics.delivery("tempfail" if result.temporary else "permfail")
            log.warning("lmtp: id=%s to=<%s> user=%s: %s", tid, address, user, result)
            return f"{result.code} {result.status} {result.text}"
        metrics.delivery("tempfail")
        log.error("lmtp: id=%s to=<%s> user=%s: %r", tid, address, user, result, exc_info=result)
        return "451 4.3.0 Temporary internal error"

    async def _deliver_one(self, user: str, pipe: _Pipe, envelope: DeliveryEnvelope) -> str:
        try:
            return await self.server.delivery.deliver(user, pipe, envelope)
        finally:
            pipe.consumer_done()

    async def _read_data(self, pipes: Sequence[_Pipe]) -> bool:
        """Read up to the final dot, feeding ``pipes``; True if the size limit was hit.

        Each read takes everything the reader has buffered (one coroutine step per
        socket read, not per line).  Bytes a pipelining client sent after the final dot
        are given back to the reader with ``feed_data``: the read emptied its buffer and
        nothing can arrive before the next ``await``, so they go back in order, ahead of
        anything received later, and aiosmtpd's command loop reads them next.
        """
        reader = self._reader
        decoder = DotDecoder()
        limit = self.server.max_message_size
        too_big = False
        while not decoder.done:
            chunk = await reader.read(READ_ALL)
            if not chunk:
                raise ConnectionResetError("the client closed the connection in DATA")
            self._reset_timeout()
            payload, used = decoder.feed(chunk)  # C-speed bulk work: no need to slice
            self._bytes_in += used
            if used < len(chunk) and not reader.at_eof():
                reader.feed_data(chunk[used:])
            if too_big:
                continue
            if decoder.size > limit:
                too_big = True
                for pipe in pipes:
                    pipe.abort(_Aborted("the message exceeds the size limit"))
                continue
            if payload:
                await _fan_out(pipes, payload)
        if not too_big:
            for pipe in pipes:
                pipe.close()
        return too_big


async def _fan_out(pipes: Iterable[_Pipe], chunk: bytes) -> None:
    for pipe in pipes:
        await pipe.send(chunk)


class LmtpServer:
    """Serves LMTP on TCP sockets, delivering through a :class:`Delivery` hook.

    Args:
        delivery: the hook that resolves recipients and stores messages.
        listen: ``host:port`` addresses to bind when :meth:`start` gets no sockets.
        max_message_size: the ``SIZE`` limit in bytes (announced, enforced).
        hostname: the name in the greeting and trace headers (default: this host's).
        timeout: seconds a client may stay silent between commands.
    """

    def __init__(
        self,
        delivery: Delivery,
        *,
        listen: Sequence[str] = ("127.0.0.1:2424",),
        max_message_size: int = 50 << 20,
        hostname: str | None = None,
        timeout: float = 300.0,
    ) -> None:
        self.delivery = delivery
        self.listen = tuple(listen)
        self.max_message_size = max_message_size
        self.hostname = hostname or socket.gethostname()
        self.timeout = timeout
        self.closing = False
        self._servers: list[asyncio.Server] = []
        self._sessions: set[LmtpSession] = set()
        self._background: set[asyncio.Future[Any]] = set()

    def _keep(self, fut: asyncio.Future[Any]) -> asyncio.Future[Any]:
        """Hold a reference to work that must finish even if its session goes away."""
        self._background.add(fut)
        fut.add_done_callback(self._background.discard)
        return fut

    async def start(self, sockets: Sequence[socket.socket] | None = None) -> None:
        """Listen: on ``sockets`` (bound, listening or not) or on :attr:`listen`."""
        loop = asyncio.get_running_loop()

        def factory() -> LmtpSession:
            return LmtpSession(self, loop)

        if sockets is None:
            for spec in self.listen:
                host, port = parse_listen(spec)
                server = await loop.create_server(factory, host, port, reuse_address=True)
                self._servers.append(server)
        else:
            for sock in sockets:
                server = await loop.create_server(factory, sock=sock)
                self._servers.append(server)
        log.info("lmtp: listening on %s", ", ".join(f"{h}:{p}" for h, p in self.addresses))

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The ``(host, port)`` pairs listened on."""
        out: list[tuple[str, int]] = []
        for server in self._servers:
            for sock in server.sockets:
                name = sock.getsockname()
                out.append((str(name[0]), int(name[1])))
        return out

    @property
    def connections(self) -> int:
        """Open client connections."""
        return len(self._sessions)

    async def shutdown(self, timeout: float = 10.0) -> None:
        """Stop accepting, let commands in flight finish, answer ``421``, close.

        Sessions still busy after ``timeout`` seconds are cut off; deliveries already
        past the final dot are still awaited (they finish or fail on their own).
        """
        self.closing = True
        for server in self._servers:
            server.close()
        for session in list(self._sessions):
            if not session.busy:
                session.say_goodbye()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._sessions and loop.time() < deadline:
            await asyncio.sleep(0.02)
        for session in list(self._sessions):
            if session.transport is not None:
                session.transport.abort()  # type: ignore[attr-defined]
        if self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
