"""One IMAP connection: an ``asyncio.Protocol`` around the sans-IO protocol core.

Theory of operation
-------------------
*Lifecycle.*  ``connection_made`` counts the connection against the limits (or says
``* BYE`` and closes), sends the greeting and sets the transport's write-buffer limit.
Bytes from ``data_received`` go into the connection's
:class:`~aiodbox.imap.protocol.ServerConnection`; events come out of it.  An idle
connection has no task at all: just this object, the parser (whose buffers are empty)
and the transport.  When a command event appears, one task is created to run it; when
the command is done the task ends, and if the client pipelined more commands the next
task starts at once.  Commands of one connection therefore run one at a time, in
order, and a command waiting for storage holds no one else up: every storage call is a
coroutine that yields to the loop.

*Commands that read more input* (APPEND's message literal, AUTHENTICATE's responses)
await :meth:`ImapConnection.next_event`, which returns the parser's next event or waits
for ``data_received`` to bring more bytes.

*Input flow control.*  While a command runs and does not consume input, pipelined bytes
collect in the parser; past ``read_limit`` bytes the transport stops reading
(``pause_reading``) until they are consumed.  Input is not read either while the client
leaves our answers unread (output paused): a client that pipelines without reading
cannot make the server buffer unbounded answers.  Events that need no task (BAD for a
malformed line, ``+`` for a literal, ``DONE``) are handled at most
:data:`EVENTS_PER_STEP` per loop callback, so a flood of pipelined lines cannot hold the
loop either.

*IDLE* needs no task: the IDLE handler answers ``+ idling`` and returns; the connection
then listens to the shared mailbox view (changes made in this process) and registers
with the mailbox's :class:`~aiodbox.imap.watch.MailboxWatch` (changes made by other
processes, polled once a second per mailbox).  A change schedules
:meth:`ImapConnection._flush_idle`, which writes the pending updates — unless the
client is not reading (output paused), in which case the flush waits for
``resume_writing``: updates are computed from state, so deferring loses nothing.
``DONE`` ends IDLE from ``data_received`` directly.

*Update ordering.*  Untagged updates are written by :meth:`send_updates` just before
each tagged reply (and during IDLE); see :mod:`aiodbox.imap.selected` for what may be
sent when.

*Timeouts* are checked by the server's sweeper (one timer for all connections), from
``last_activity``: input received or output drained.  A connection that is not
logged in gets ``login_timeout``, one that is gets ``idle_timeout``; a running command
keeps a connection alive unless its output has been stuck for that long.

*Errors.*  A protocol error is answered ``BAD`` and the connection goes on.  Storage
errors become ``NO`` with their response code.  Anything else is logged with its
traceback and answered ``NO [SERVERBUG]``; the client never sees a traceback.  If the
connection is lost while a command runs, the command finishes (or fails at its next
write) and the resources are released when it ends.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, cast

from aiodbox import metrics
from aiodbox.auth import AuthStatus
from aiodbox.imap import capabilities
from aiodbox.imap.commands import COMMANDS
from aiodbox.imap.commands.base import CommandError, Reply, bad, no, ok
from aiodbox.imap.output import ConnectionLost, Output, OutputError
from aiodbox.imap.protocol import (
    NEED_DATA,
    AppendMessageStart,
    Command,
    ConnectionClosed,
    ContinuationRequired,
    Event,
    IdleDone,
    RemoteProtocolError,
    Session,
    SessionState,
)
from aiodbox.imap.protocol import responses as r
from aiodbox.imap.selected import BadSequence, SelectedMailbox
from aiodbox.storage.errors import MailboxNotFound, StorageError

if TYPE_CHECKING:
    from aiodbox.imap.server import ImapServer
    from aiodbox.storage import User

log = logging.getLogger("aiodbox.imap")

SERVERBUG_TEXT = "Internal error occurred. Refer to server log for more information."
EVENTS_PER_STEP = 32
"""Parser events handled in one loop callback before yielding to other connections."""
IDLE_KEEPALIVE = 120.0
"""Seconds between ``* OK Still here`` lines during IDLE (Dovecot's default)."""


class _Idle:
    """A connection in IDLE: the IDLE command's tag and bookkeeping."""

    __slots__ = (
        "claim",
        "claim_failed",
        "keepalive_at",
        "scheduled",
        "started",
        "tag",
        "watching",
    )

    def __init__(self, tag: str, now: float) -> None:
        self.tag = tag
        self.started = now
        self.keepalive_at = now + IDLE_KEEPALIVE
        self.scheduled = False
        self.watching = False
        self.claim: asyncio.Task[None] | None = None
        """Claiming new messages as \\Recent before they are announced (a short task)."""
        self.claim_failed = False


def command_name(event: Command | AppendMessageStart) -> str:
    """``"UID FETCH"`` / ``"FETCH"`` / ``"EXAMINE"``: the name for logs and metrics."""
    name = event.name
    if name == "SELECT" and getattr(event, "readonly", False):
        return "EXAMINE"
    if getattr(event, "uid", False) is True:
        return "UID " + name
    return name


class ImapConnection(asyncio.Protocol):
    """The server side of one IMAP connection; see the module docstring.

    Attributes:
        server: The :class:`~aiodbox.imap.server.ImapServer`.
        output: Where responses are written.
        parser: The sans-IO protocol core.
        session: The RFC 3501 state.
        peer_ip: The client's address ("" when unknown).
        tls: The connection is encrypted.
        user: The logged-in storage user, or None.
        username: The login name (for logs), or None.
        selected: The selected mailbox, or None.
        enabled: Extensions turned on with ENABLE (``CONDSTORE``, ``QRESYNC``).
        last_activity: Loop time of the last input or output progress.
    """

    __slots__ = (
        "_admitted",
        "_continue_scheduled",
        "_eof",
        "_idle",
        "_reading_paused",
        "_shutdown",
        "_task",
        "_user_counted",
        "_waiter",
        "bytes_in",
        "closing",
        "enabled",
        "last_activity",
        "output",
        "parser",
        "peer_ip",
        "selected",
        "server",
        "session",
        "tls",
        "transport",
        "user",
        "username",
    )

    def __init__(self, server: ImapServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.output: Output = None  # type: ignore[assignment]  # set in connection_made
        self.parser = server.new_parser()
        self.session = Session()
        self.peer_ip = ""
        self.tls = False
        self.user: User | None = None
        self.username: str | None = None
        self.selected: SelectedMailbox | None = None
        self.enabled: frozenset[str] = frozenset()
        self.bytes_in = 0
        self.last_activity = 0.0
        self.closing = False
        self._task: asyncio.Task[None] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._idle: _Idle | None = None
        self._reading_paused = False
        self._eof = False
        self._admitted = False
        self._user_counted = False
        self._shutdown = False
        self._continue_scheduled = False

    # ------------------------------------------------------------ asyncio side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing it.
        transport = cast(asyncio.Transport, transport)
        server = self.server
        self.transport = transport
        self.last_activity = server.loop.time()
        peer = transport.get_extra_info("peername")
        self.peer_ip = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        self.tls = transport.get_extra_info("sslcontext") is not None
        self.output = Output(transport, sendfile_ok=not self.tls)
        transport.set_write_buffer_limits(high=server.config.imap.output_buffer_size)
        reason = server.admit(self)
        if reason is not None:
            self.output.write(r.bye(reason))
            self.closing = True
            transport.close()
            return
        self._admitted = True
        metrics.connection("imap", 1)
        caps = r.ResponseCode.capability(self.capabilities())
        self.output.write(r.untagged_status("OK", "aiodbox ready.", caps))

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.bytes_in += len(data)
        self.last_activity = self.server.loop.time()
        try:
            self.parser.receive_data(data)
        except Exception:  # data after EOF: cannot happen with asyncio transports
            log.exception("IMAP parser refused input")
            self.close(None)
            return
        self._wake_reader()
        if self._task is None and not self._continue_scheduled:
            self._process()
        if self.parser.buffered_size >= self.server.read_limit and (
            self._task is not None or self._continue_scheduled
        ):
            self._pause_reading()

    def eof_received(self) -> bool:
        self._eof = True
        if not self.closing:
            self.parser.receive_data(b"")
            self._wake_reader()
            if self._task is None:
                self._process()
        # Keep the transport open until what was received has been answered (asyncio's
        # TLS transports close on EOF whatever this returns).
        return not self.tls

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        if self.output is not None:
            self.output.lost()
        if not self._eof:
            self._eof = True
            self.parser.receive_data(b"")
        self._wake_reader()
        if self._idle is not None:
            self._stop_idle()
        if self._task is None:
            self._release()
        # else: the running command ends (at its next write at the latest) and releases

    def pause_writing(self) -> None:
        self.output.pause()

    def resume_writing(self) -> None:
        self.last_activity = self.server.loop.time()
        self.output.resume()
        if self._idle is not None:
            self._schedule_idle_flush()
        if self._task is None and not self.closing:
            self._continue_soon()  # commands held back while the client did not read

    # ------------------------------------------------------------ session facts

    @property
    def authenticated(self) -> bool:
        """True once LOGIN/AUTHENTICATE succeeded."""
        return self.session.state in (SessionState.AUTHENTICATED, SessionState.SELECTED)

    @property
    def plaintext_ok(self) -> bool:
        """Passwords may be sent on this connection (TLS, or allowed by the config)."""
        return self.tls or self.server.config.auth.allow_plaintext

    def capabilities(self) -> list[str]:
        """What CAPABILITY lists in the current state."""
        if self.authenticated:
            return capabilities.postlogin(self.server.config.imap.max_literal_size)
        return capabilities.prelogin(
            tls_active=self.tls,
            starttls_available=self.server.ssl_context is not None,
            plaintext_allowed=self.server.config.auth.allow_plaintext,
        )

    @property
    def busy(self) -> bool:
        """A command is running."""
        return self._task is not None

    # ------------------------------------------------------------ event processing

    def _process(self) -> None:
        """Consume parser events until one starts a command task or input runs out.

        At most :data:`EVENTS_PER_STEP` events are handled per call (a flood of pipelined
        one-line commands must not hold the loop); the rest is handled in a later loop
        iteration.  While the client does not read what was already answered (output
        paused), its further commands are not read either.
        """
        parser = self.parser
        budget = EVENTS_PER_STEP
        while self._task is None and not self.closing:
            if self.output.paused:
                self._pause_reading()  # resume_writing() processes on
                return
            if budget <= 0:
                self._continue_soon()
                return
            budget -= 1
            try:
                event = parser.next_event()
            except RemoteProtocolError as err:
                self._protocol_error(err)
                continue
            except Exception:
                log.exception("IMAP parser failed")
                self.close(r.bye(SERVERBUG_TEXT))
                return
            if event is NEED_DATA:
                self._resume_reading()
                return
            assert isinstance(event, Event)
            self._dispatch(event)

    def _continue_soon(self) -> None:
        if not self._continue_scheduled:
            self._continue_scheduled = True
            self.server.loop.call_soon(self._continue)

    def _continue(self) -> None:
        if not self._continue_scheduled:
            return
        self._continue_scheduled = False
        if self._task is None:
            self._process()

    def _dispatch(self, event: Event) -> None:
        if isinstance(event, Command | AppendMessageStart):
            self._task = self.server.loop.create_task(self._execute(event))
        elif isinstance(event, ContinuationRequired):
            self.output.write(r.continuation("Ready for literal data"))
        elif isinstance(event, IdleDone):
            self._end_idle(event.tag, "OK")
        elif isinstance(event, ConnectionClosed):
            self.close(None)
        else:  # LiteralChunk etc. outside the command that expects them: a bug
            log.error("unexpected IMAP event outside a command: %r", event)
            self.close(r.bye(SERVERBUG_TEXT))

    def _protocol_error(self, err: RemoteProtocolError) -> None:
        idle = self._idle
        if idle is not None and err.tag == idle.tag:
            self._end_idle(idle.tag, "BAD", err.message)
            return
        self.output.write(r.error_response(err))
        self._log(err.command or "?", err.tag, "BAD", 0.0, 0, 0)

    async def next_event(self) -> Event:
        """The next protocol event of the running command, waiting for input if needed.

        Raises:
            RemoteProtocolError: The client's bytes broke the grammar (the parser has
                resynchronised).
        """
        parser = self.parser
        while True:
            event = parser.next_event()
            if isinstance(event, ContinuationRequired):
                self.output.write(r.continuation("Ready for literal data"))
                continue
            if event is not NEED_DATA:
                assert isinstance(event, Event)
                if parser.buffered_size < self.server.read_limit:
                    self._resume_reading()
                return event
            self._resume_reading()
            waiter = self.server.loop.create_future()
            self._waiter = waiter
            try:
                await waiter
            finally:
                self._waiter = None

    def _wake_reader(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _pause_reading(self) -> None:
        if not self._reading_paused and not self.closing:
            self._reading_paused = True
            assert self.transport is not None
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and not self.closing and not self.output.paused:
            self._reading_paused = False
            assert self.transport is not None
            self.transport.resume_reading()

    # ------------------------------------------------------------ running commands

    async def _execute(self, event: Command | AppendMessageStart) -> None:
        name = command_name(event)
        loop = self.server.loop
        started = loop.time()
        in0, out0 = self.bytes_in, self.output.bytes_out
        status = "BAD"
        try:
            status = await self._run(event)
        except ConnectionLost:
            status = "LOST"
        except OutputError as exc:
            log.error("closing connection of %s: %s", self.username or self.peer_ip, exc)
            status = "ABORTED"
            self.abort()
        except Exception:  # a bug outside the handler (the handler's own are answered)
            log.exception("IMAP command %s failed", name)
            status = "BUG"
            self.close(r.bye(SERVERBUG_TEXT))
        finally:
            self._task = None
            elapsed = loop.time() - started
            if status != "IDLE":
                self._log(
                    name,
                    event.tag,
                    status,
                    elapsed,
                    self.bytes_in - in0,
                    self.output.bytes_out - out0,
                )
            metrics.command("imap", name, elapsed, status)
            self.last_activity = loop.time()
            if self.closing:
                self._release()
            elif self._shutdown:
                self._say_goodbye()
            else:
                self._process()

    async def _run(self, event: Command | AppendMessageStart) -> str:
        """Run one command and write its replies; return its status for the log."""
        spec = COMMANDS.get(event.name)
        if spec is None or not self.session.allowed(event):
            refusal = self._not_allowed(event, spec is None)
            if isinstance(event, AppendMessageStart):
                self.parser.reject_literal()
            self.output.write(r.tagged(event.tag, refusal.status, refusal.text, refusal.code))
            return refusal.status
        reply: Reply | None
        try:
            if spec.sync and self.selected is not None:
                await self.sync_selected()
            reply = await spec.handler(self, event)
        except CommandError as exc:
            reply = exc.reply
        except BadSequence as exc:
            reply = bad(f"Error in IMAP command {command_name(event)}: {exc}")
        except RemoteProtocolError as exc:
            reply = Reply("BAD", exc.message, r.ResponseCode(exc.code) if exc.code else None)
        except MailboxNotFound as exc:
            if self.selected is not None and self.selected.mailbox.deleted:
                self.close(r.bye("Selected mailbox was deleted, have to disconnect."))
                return "NO"
            reply = no(str(exc), _code(exc))
        except StorageError as exc:
            reply = no(str(exc) or "Operation failed.", _code(exc))
        except (ConnectionLost, OutputError):
            raise
        except Exception:
            log.exception(
                "IMAP %s by %s failed", command_name(event), self.username or self.peer_ip
            )
            reply = no(SERVERBUG_TEXT, r.SERVERBUG)
        if reply is None:
            return "IDLE"
        if self.closing:
            return reply.status
        if self.selected is not None:
            allow = not (spec.expunges_with_uid_only and not getattr(event, "uid", False))
            self.send_updates(allow_expunge=allow)
        self.output.write(r.tagged(event.tag, reply.status, reply.text, reply.code))
        self.session.complete(event, reply.status)
        if reply.after is not None:
            await reply.after()
        return reply.status

    def _not_allowed(self, event: Command | AppendMessageStart, unknown: bool) -> Reply:
        name = command_name(event)
        if unknown or self.session.state is SessionState.LOGOUT:
            return bad(f"Error in IMAP command {name}: Unknown command.")
        if self.session.state is SessionState.NOT_AUTHENTICATED:
            return bad(f"Error in IMAP command {name}: Please log in first.")
        if name in ("LOGIN", "AUTHENTICATE", "STARTTLS"):
            return bad(f"Error in IMAP command {name}: Already logged in.")
        if self.session.state is SessionState.SELECTED:  # ENABLE
            return bad(f"Error in IMAP command {name}: Not allowed with a mailbox selected.")
        return bad("No mailbox selected.")

    def _log(
        self, name: str, tag: str | None, status: str, secs: float, n_in: int, n_out: int
    ) -> None:
        metrics.transferred("imap", "in", n_in)
        metrics.transferred("imap", "out", n_out)
        if log.isEnabledFor(logging.INFO):
            log.info(
                "user=%s ip=%s cmd=%s tag=%s result=%s ms=%.2f in=%d out=%d",
                self.username or "-",
                self.peer_ip or "-",
                name,
                tag or "*",
                status,
                secs * 1000.0,
                n_in,
                n_out,
            )

    # ------------------------------------------------------------ selected mailbox

    async def sync_selected(self) -> None:
        """Catch up with other processes' changes to the selected mailbox (coalesced)."""
        sel = self.selected
        if sel is not None:
            await self.server.watches.get(sel.mailbox).sync()
            await sel.claim_recent()  # new messages are \Recent for the first to learn

    def send_updates(self, *, allow_expunge: bool = True) -> None:
        """Write the untagged updates the client is owed about its selected mailbox."""
        sel = self.selected
        if sel is None:
            return
        for line in sel.updates(allow_expunge=allow_expunge):
            self.output.buffer(line)
        self.output.flush()

    async def select(self, selected: SelectedMailbox) -> None:
        """Make ``selected`` the selected mailbox (closing any previous one)."""
        await self.unselect()
        self.selected = selected

    async def unselect(self) -> None:
        """Close the selected mailbox, if any."""
        sel = self.selected
        if sel is None:
            return
        self.selected = None
        await sel.close()

    # ------------------------------------------------------------ login

    async def login(self, username: str, password: str | bytes) -> Reply:
        """Check a password and log the user in (LOGIN and AUTHENTICATE share this)."""
        server = self.server
        result = await server.authenticator.authenticate(
            username, password, remote_ip=self.peer_ip or None
        )
        if result.status is AuthStatus.TEMPFAIL:
            return no("Temporary authentication failure.", r.UNAVAILABLE)
        if not result.ok:
            text = result.reason or "Authentication failed."
            return no(text, r.AUTHENTICATIONFAILED)
        if self.closing:
            return no("Connection closed.")
        if not server.limits.admit_user(result.user):
            return no("Maximum number of connections from user exceeded.", r.LIMIT)
        self._user_counted = True
        try:
            self.user = await server.storage.user(result.user)
        except (StorageError, OSError, ValueError) as exc:
            log.error("cannot open the storage of %s: %s", result.user, exc)
            server.limits.release_user(result.user)
            self._user_counted = False
            return no("Temporary failure opening the mailbox storage.", r.UNAVAILABLE)
        self.username = result.user
        caps = r.ResponseCode.capability(
            capabilities.postlogin(server.config.imap.max_literal_size)
        )
        return ok("Logged in", caps)

    # ------------------------------------------------------------ STARTTLS

    async def start_tls(self) -> None:
        """Upgrade the connection (after ``OK Begin TLS negotiation now.``)."""
        ctx = self.server.ssl_context
        assert ctx is not None and self.transport is not None
        # Anything pipelined after STARTTLS was sent in the clear: drop it (it could be
        # a command injected by a man in the middle).
        self.parser = self.server.new_parser()
        self._resume_reading()
        try:
            transport = await self.server.loop.start_tls(
                self.transport, self, ctx, server_side=True, ssl_handshake_timeout=30.0
            )
        except (TimeoutError, OSError, ConnectionError) as exc:
            log.info("STARTTLS handshake with %s failed: %s", self.peer_ip, exc)
            self.abort()
            return
        if transport is None:  # pragma: no cover - closed during the handshake
            self.abort()
            return
        self.transport = transport
        self.output.transport = transport
        self.output.sendfile_ok = False
        transport.set_write_buffer_limits(high=self.server.config.imap.output_buffer_size)
        self.tls = True

    # ------------------------------------------------------------ IDLE

    def start_idle(self, tag: str) -> None:
        """Enter IDLE after ``+ idling`` was sent (the IDLE handler calls this)."""
        idle = self._idle = _Idle(tag, self.server.loop.time())
        self.parser.expect_idle_done()
        sel = self.selected
        if sel is not None:
            sel.listen(self._schedule_idle_flush)
            self.server.watches.get(sel.mailbox).add_idler(self._idle_poll_failed)
            idle.watching = True

    def _stop_idle(self) -> _Idle | None:
        idle = self._idle
        if idle is None:
            return None
        self._idle = None
        sel = self.selected
        if idle.watching and sel is not None:
            sel.unlisten(self._schedule_idle_flush)
            self.server.watches.get(sel.mailbox).remove_idler(self._idle_poll_failed)
        return idle

    def _end_idle(self, tag: str, status: r.Status, text: str = "Idle completed.") -> None:
        idle = self._stop_idle()
        if self.selected is not None:
            self.send_updates(allow_expunge=True)
        self.output.write(r.tagged(tag, status, text))
        if idle is not None:
            secs = self.server.loop.time() - idle.started
            self._log("IDLE", tag, status, secs, 0, 0)

    def _schedule_idle_flush(self) -> None:
        idle = self._idle
        if idle is not None and not idle.scheduled:
            idle.scheduled = True
            self.server.loop.call_soon(self._flush_idle)

    def _flush_idle(self) -> None:
        idle = self._idle
        if idle is None:
            return
        idle.scheduled = False
        if self.closing or self.output.paused:
            return  # resume_writing schedules another flush
        sel = self.selected
        if sel is not None and sel.mailbox.deleted:
            self.close(r.bye("Selected mailbox was deleted, have to disconnect."))
            return
        if sel is not None and sel.can_claim_recent() and not idle.claim_failed:
            # New messages: claim them first, so EXISTS comes with their RECENT count.
            if idle.claim is None:
                idle.claim = self.server.loop.create_task(self._claim_in_idle(idle, sel))
            return
        self.send_updates(allow_expunge=True)

    async def _claim_in_idle(self, idle: _Idle, sel: SelectedMailbox) -> None:
        try:
            await sel.claim_recent()
        except Exception as exc:  # announce without claiming rather than not at all
            log.info("claiming recent messages in IDLE failed: %s", exc)
            idle.claim_failed = True
        finally:
            idle.claim = None
        if self._idle is idle:
            self._schedule_idle_flush()

    def _idle_poll_failed(self, exc: Exception) -> None:
        sel = self.selected
        if self._idle is not None and sel is not None and sel.mailbox.deleted:
            self.close(r.bye("Selected mailbox was deleted, have to disconnect."))

    # ------------------------------------------------------------ timeouts, closing

    def check_timeout(self, now: float) -> None:
        """Called by the server's sweeper: close an inactive connection."""
        if self.closing:
            return
        idle = self._idle
        if idle is not None and now >= idle.keepalive_at:
            idle.keepalive_at = now + IDLE_KEEPALIVE
            if not self.output.paused:
                self.output.write(r.untagged_status("OK", "Still here"))
        limit = self.server.config.imap.idle_timeout if self.authenticated else None
        if limit is None:
            limit = self.server.config.imap.login_timeout
        if now - self.last_activity < limit:
            return
        if self._task is not None and not self.output.paused:
            return  # working on a command, and the client reads what we send
        log.info("user=%s ip=%s disconnected for inactivity", self.username or "-", self.peer_ip)
        if self.output.paused:
            self.abort()
        else:
            self.close(r.bye("Disconnected for inactivity."))

    def close(self, bye: bytes | None) -> None:
        """Say ``bye`` (if given) and close after the output is flushed."""
        if self.closing and self.transport is not None and self.transport.is_closing():
            return
        self.closing = True
        if self._idle is not None:
            self._stop_idle()
        if bye is not None:
            self.output.write(bye)
        self.output.flush()
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Close at once, dropping unsent output."""
        self.closing = True
        if self._idle is not None:
            self._stop_idle()
        if self.transport is not None:
            self.transport.abort()

    def begin_shutdown(self) -> None:
        """Server shutdown: say BYE now if idle, else once the running command ended."""
        self._shutdown = True
        if self.closing:
            return
        if self._task is None:
            self._say_goodbye()

    def _say_goodbye(self) -> None:
        self.close(r.bye("Server shutting down."))

    def _release(self) -> None:
        """Free everything held for this connection (once, when it is gone and idle)."""
        if self._admitted:
            self._admitted = False
            metrics.connection("imap", -1)
            self.server.release(self)
        if self._user_counted and self.username is not None:
            self._user_counted = False
            self.server.limits.release_user(self.username)
        sel = self.selected
        if sel is not None:
            self.selected = None
            self.server.spawn(sel.close())

    def kill(self) -> None:
        """Shutdown timeout: drop the connection and cancel its command."""
        self.abort()
        if self._task is not None:
            self._task.cancel()


def _code(exc: StorageError) -> r.ResponseCode | None:
    code = exc.imap_code
    if not code:
        return None
    try:
        return r.ResponseCode(code)
    except Exception:
        return None
