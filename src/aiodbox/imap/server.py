"""The IMAP server: listening sockets, connection accounting, timeouts, shutdown.

Theory of operation
-------------------
:class:`ImapServer` owns the listening sockets (``[imap] listen`` in the clear,
``tls_listen`` with implicit TLS, or sockets handed over by ``aiodbox serve``) and the
set of live :class:`~aiodbox.imap.connection.ImapConnection` protocols.  What the
connections share lives here: the storage (whose users and open mailbox views are
shared by all connections of a process), the authenticator, the TLS context, the
connection limits, the per-mailbox watches and one *sweeper* timer that checks every
connection's inactivity a few times per timeout period (no timer per connection).

Shutdown stops accepting, asks every connection to finish (an idle one says ``* BYE``
at once, a busy one after its command), waits up to the timeout, then drops whatever is
left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Coroutine
from typing import Any

# The storage imports these lazily; importing them here keeps the first LOGIN/SELECT of
# a fresh process from paying a module import (tens of ms) inside a loop callback.
import aiodbox.storage.formats
import aiodbox.storage.mailbox  # noqa: F401
from aiodbox.auth import PasswdFileAuthenticator
from aiodbox.config import Config, parse_listen
from aiodbox.imap.connection import ImapConnection
from aiodbox.imap.limits import ConnectionLimits
from aiodbox.imap.protocol import DEFAULT_MAX_LITERAL_SIZE, ServerConnection
from aiodbox.imap.tls import server_context
from aiodbox.imap.watch import Watches
from aiodbox.storage import Storage

log = logging.getLogger("aiodbox.imap")

_INPUT_SLACK = 64 << 10


class ImapServer:
    """An IMAP4rev1 server over a :class:`~aiodbox.storage.Storage`.

    Args:
        config: The whole configuration (``[imap]``, ``[auth]``, ``[tls]`` are used).
        storage: The mail storage; connections of one user share its views.
        authenticator: Checks LOGIN/AUTHENTICATE passwords.
        ssl_context: The TLS context for STARTTLS and ``tls_listen``; by default it is
            loaded from ``[tls]`` (None when no certificate is configured).

    Raises:
        TlsConfigError: ``[tls]`` is set but cannot be loaded.
    """

    def __init__(
        self,
        config: Config,
        storage: Storage,
        authenticator: PasswdFileAuthenticator,
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.config = config
        self.storage = storage
        self.authenticator = authenticator
        self.ssl_context = ssl_context if ssl_context is not None else server_context(config.tls)
        imap = config.imap
        self.limits = ConnectionLimits(
            imap.max_connections, imap.max_connections_per_ip, imap.max_connections_per_user
        )
        self.watches = Watches()
        self.read_limit = imap.max_line_length + _INPUT_SLACK
        self._literal_limit = min(DEFAULT_MAX_LITERAL_SIZE, imap.max_literal_size)
        self._connections: set[ImapConnection] = set()
        self._servers: list[asyncio.base_events.Server] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drained: asyncio.Event | None = None
        self._stopping = False

    # ------------------------------------------------------------ public API

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the server runs on (known once :meth:`start` ran)."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    async def start(self, sockets: list[socket.socket] | None = None) -> None:
        """Start listening.

        Args:
            sockets: Pre-bound listening sockets to serve (``aiodbox serve`` passes
                SO_REUSEPORT sockets); a socket whose address is one of ``tls_listen``
                gets implicit TLS.  None: bind ``[imap] listen`` and ``tls_listen``.

        Raises:
            OSError: An address cannot be bound.
            ValueError: ``tls_listen`` is set but there is no TLS context.
        """
        self._loop = asyncio.get_running_loop()
        imap = self.config.imap
        if imap.tls_listen and self.ssl_context is None:
            raise ValueError("[imap] tls_listen needs [tls] cert and key")
        tls_addresses = {parse_listen(a) for a in imap.tls_listen}
        if sockets is None:
            for spec in imap.listen:
                host, port = parse_listen(spec)
                await self._listen(host=host, port=port, tls=False)
            for spec in imap.tls_listen:
                host, port = parse_listen(spec)
                await self._listen(host=host, port=port, tls=True)
        else:
            for sock in sockets:
                name = sock.getsockname()
                tls = (str(name[0]), int(name[1])) in tls_addresses
                await self._listen(sock=sock, tls=tls)
        self._schedule_sweep()
        log.info("IMAP listening on %s", ", ".join(f"{h}:{p}" for h, p in self.addresses))

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """``(host, port)`` of every listening socket (the real port when 0 was asked)."""
        out: list[tuple[str, int]] = []
        for server in self._servers:
            for sock in server.sockets:
                name = sock.getsockname()
                out.append((str(name[0]), int(name[1])))
        return out

    async def shutdown(self, timeout: float = 10.0) -> None:
        """Stop accepting; let commands in flight finish (up to ``timeout`` seconds);
        send ``* BYE`` to every client and close every connection."""
        self._stopping = True
        for server in self._servers:
            server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self._drained = asyncio.Event()
        for conn in list(self._connections):
            conn.begin_shutdown()
        if self._connections:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._drained.wait(), timeout)
        for conn in list(self._connections):
            conn.kill()
        if self._connections:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._drained.wait(), 1.0)
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        self._servers.clear()
        self.watches.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def reload_auth(self) -> None:
        """Re-read the passwd-file (SIGHUP); the old table stays if the new one is bad."""
        self.spawn(self._reload_auth())

    # ------------------------------------------------------------ for connections

    def new_parser(self) -> ServerConnection:
        """A protocol core with the configured limits."""
        return ServerConnection(
            max_line_length=self.config.imap.max_line_length,
            max_literal_size=self._literal_limit,
        )

    def admit(self, conn: ImapConnection) -> str | None:
        """Count a new connection; return the BYE text if it must be refused."""
        if self._stopping:
            return "Server shutting down."
        reason = self.limits.admit_connection(conn.peer_ip)
        if reason is None:
            self._connections.add(conn)
        return reason

    def release(self, conn: ImapConnection) -> None:
        """A connection admitted by :meth:`admit` is gone."""
        self._connections.discard(conn)
        self.limits.release_connection(conn.peer_ip)
        if not self._connections and self._drained is not None:
            self._drained.set()

    @property
    def connections(self) -> frozenset[ImapConnection]:
        """The live connections (for tests and stats)."""
        return frozenset(self._connections)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` in the background, keeping a reference until it ends."""
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    # ------------------------------------------------------------ internals

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    async def _reload_auth(self) -> None:
        try:
            await self.authenticator.reload()
        except Exception as exc:
            log.error("passwd-file reload failed, keeping the previous table: %s", exc)

    async def _listen(
        self,
        *,
        host: str | None = None,
        port: int | None = None,
        sock: socket.socket | None = None,
        tls: bool,
    ) -> None:
        ctx = self.ssl_context if tls else None
        timeout = 30.0 if ctx is not None else None
        if sock is not None:
            server = await self.loop.create_server(
                lambda: ImapConnection(self),
                sock=sock,
                ssl=ctx,
                backlog=1024,
                ssl_handshake_timeout=timeout,
            )
        else:
            assert port is not None
            server = await self.loop.create_server(
                lambda: ImapConnection(self),
                host=host,
                port=port,
                ssl=ctx,
                reuse_address=True,
                backlog=1024,
                ssl_handshake_timeout=timeout,
            )
        self._servers.append(server)

    def _sweep_interval(self) -> float:
        imap = self.config.imap
        shortest = min(imap.login_timeout, imap.idle_timeout)
        return min(5.0, max(0.05, shortest / 4))

    def _schedule_sweep(self) -> None:
        if not self._stopping:
            self._sweeper = self.loop.call_later(self._sweep_interval(), self._sweep)

    def _sweep(self) -> None:
        now = self.loop.time()
        for conn in list(self._connections):
            try:
                conn.check_timeout(now)
            except Exception:  # pragma: no cover - a bug must not stop the sweeper
                log.exception("timeout check failed")
        self._schedule_sweep()
