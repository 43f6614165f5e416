"""The server side of an IMAP4rev1 connection, sans-IO: bytes in, events out.

Theory of operation
===================

The caller feeds whatever it read from the socket to :meth:`ServerConnection.receive_data`
and then calls :meth:`ServerConnection.next_event` until it returns :data:`NEED_DATA`.
Nothing here does I/O, and nothing blocks: every call does a bounded amount of work on
the bytes already held.

Commands are *assembled*, then parsed.  IMAP commands are lines, except that a line may
end in a literal header ``{n}`` / ``{n+}`` after which ``n`` raw bytes follow and the
command line continues.  In ``COMMAND`` mode the parser takes one line segment at a
time (``bytes.find(b"\\n")``, never a loop per byte) into the command buffer.  A
segment that ends without a literal header completes the command: the whole buffer is
parsed by the recursive-descent grammar (:mod:`.grammar`) into one command event.

A segment that *does* end in a literal header is first parsed as it stands (the grammar
stops at the header), which classifies the literal before any of its bytes are read:

* an ordinary string literal (LOGIN password, mailbox name, search string ...): its
  size is checked against ``max_literal_size``; a synchronising one produces
  :class:`ContinuationRequired` (the server sends ``+``); ``LITERAL`` mode then copies
  its bytes into the command buffer and ``COMMAND`` mode resumes;
* the APPEND message literal: :class:`AppendMessageStart` is returned and the parser
  pauses (``APPEND_PAUSED``) until the server calls :meth:`accept_literal` or
  :meth:`reject_literal`.  Accepted bytes are *streamed* out as :class:`LiteralChunk`
  events (``APPEND_DATA``: slices of the receive buffer, never assembled), then
  :class:`LiteralEnd`; ``COMMAND`` mode then reads the rest of the APPEND (another
  MULTIAPPEND message, or CRLF giving :class:`AppendEnd`);
* a command that is already wrong (unknown name, bad syntax before the literal): the
  error is reported at once, before the client is told to send the literal.

Limits.  The command text (excluding literal bytes) may not exceed ``max_line_length``;
the check happens before more of an unterminated line is buffered.  Literals inside
commands other than the APPEND message may not exceed ``max_literal_size`` in total.
So the command buffer never exceeds ``max_line_length + max_literal_size`` and, once
``next_event()`` has returned ``NEED_DATA``, the receive buffer holds at most
``max_line_length`` bytes (APPEND message bytes are handed out as they arrive).

Errors and resynchronisation.  Every problem with the client's bytes raises
:class:`RemoteProtocolError` (tag and command when they could be read); before raising,
the parser arranges to skip exactly the rest of the bad command, the way the client
sees it:

* a bad line that ends in a *synchronising* literal header ends the command there (the
  client waits for a ``+`` that never comes, reads our ``BAD`` and gives up);
* a *non-synchronising* literal is already on its way: exactly ``n`` bytes are dropped
  (``DISCARD``), then the rest of the command is skipped (``SKIP``) in the same way, up
  to the line end that has no literal header;
* an over-long line is dropped up to its LF (keeping only a short tail to see whether
  it ended in a literal header).

Rejected APPEND literals follow Dovecot (``cmd-append.c``, ``cmd_append_cancel``): for
``{n}`` the client sends nothing more and the next line is a new command; for ``{n+}``
the ``n`` bytes and the rest of the APPEND (further messages included) are read and
dropped, so the connection stays usable.  A server that would rather not read a huge
rejected ``{n+}`` literal may close the connection instead.

IDLE and AUTHENTICATE switch to one-line modes only when the server says so
(:meth:`expect_idle_done`, :meth:`expect_sasl_response`), because only the server knows
whether it accepted the command and sent the ``+``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass

from .commands import Authenticate, Command, Idle
from .errors import LocalProtocolError, RemoteProtocolError
from .events import (
    NEED_DATA,
    AppendEnd,
    AppendMessageStart,
    ConnectionClosed,
    ContinuationRequired,
    Event,
    IdleDone,
    LiteralChunk,
    LiteralEnd,
    SaslResponse,
)
from .grammar import AppendMessageReached, parse_append_tail, parse_command
from .lexer import MAX_LITERAL_DIGITS, TAG_RE, NeedLiteral, ParseError, decode_base64
from .responses import continuation

DEFAULT_MAX_LINE_LENGTH = 64 * 1024
"""Default bound on a command's text, literal bytes excluded."""
DEFAULT_MAX_LITERAL_SIZE = 64 * 1024
"""Default bound on the literals of one command other than the APPEND message."""

_TAIL = 40  # bytes kept of a skipped line, to see a literal header at its end
_LITERAL_BODY = re.compile(rb"(\d+)(\+?)")
_HUGE = 2**64  # stands for a literal size with too many digits

Result = Event | type[NEED_DATA] | None  # None: the mode changed, run the loop again


def literal_at_end(segment: bytes) -> tuple[int, bool] | None:
    """Return ``(size, synchronizing)`` if ``segment`` (ending in LF) ends in ``{n[+]}``.

    Sizes with more than 19 digits come back as 2**64 (always too large).
    """
    end = len(segment) - 1
    if end > 0 and segment[end - 1] == 0x0D:
        end -= 1
    if end < 3 or segment[end - 1] != 0x7D:
        return None
    start = segment.rfind(b"{", 0, end - 1)
    if start < 0:
        return None
    m = _LITERAL_BODY.fullmatch(segment, start + 1, end - 1)
    if m is None:
        return None
    digits = m.group(1)
    size = int(digits) if len(digits) <= MAX_LITERAL_DIGITS else _HUGE
    return size, not m.group(2)


def _strip_eol(segment: bytes) -> bytes:
    end = len(segment) - 1  # the LF
    if end > 0 and segment[end - 1] == 0x0D:
        end -= 1
    return segment[:end]


def _guess_tag(data: bytes) -> str | None:
    m = TAG_RE.match(data)
    if m is None or data[m.end() : m.end() + 1] != b" ":
        return None
    return m.group(0).decode("ascii")


class _Mode(enum.Enum):
    COMMAND = "reading a command line"
    LITERAL = "reading a literal inside a command"
    APPEND_PAUSED = "waiting for accept_literal() or reject_literal()"
    APPEND_DATA = "streaming an APPEND message literal"
    DISCARD = "dropping a literal after an error or a rejection"
    SKIP = "dropping the rest of a bad command"
    IDLE = "waiting for DONE"
    SASL = "waiting for a SASL response line"
    CLOSED = "closed"


@dataclass(slots=True)
class _AppendContext:
    tag: str
    mailbox: str
    count: int = 0


class ServerConnection:
    """Sans-IO server side of one IMAP connection.

    Args:
        max_line_length: Bound on a command's text, literal bytes excluded; longer
            lines raise :class:`RemoteProtocolError` and are skipped.
        max_literal_size: Bound on the total size of the literals inside one command,
            the APPEND message literal excepted (the server checks that one itself).

    Call :meth:`next_event` until it returns :data:`NEED_DATA` before feeding more
    bytes: then the receive buffer never holds more than ``max_line_length`` bytes plus
    one read, and the command buffer never more than ``max_line_length +
    max_literal_size``.

    Example::

        conn = ServerConnection()
        conn.receive_data(data)
        while (event := conn.next_event()) is not NEED_DATA:
            ...

    Raises:
        ValueError: ``max_line_length`` < 64 or ``max_literal_size`` < 0.
    """

    def __init__(
        self,
        *,
        max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
        max_literal_size: int = DEFAULT_MAX_LITERAL_SIZE,
    ) -> None:
        if max_line_length < 64 or max_literal_size < 0:
            raise ValueError("max_line_length must be >= 64 and max_literal_size >= 0")
        self.max_line_length = max_line_length
        self.max_literal_size = max_literal_size
        self._buf = bytearray()
        self._scan = 0  # where to resume looking for LF in _buf
        self._cmd = bytearray()  # the command assembled so far
        self._literal_bytes = 0  # literal payload bytes inside _cmd
        self._cmd_tag = ""  # tag and name of the command in _cmd, once a literal was seen
        self._cmd_name: str | None = None
        self._remaining = 0  # bytes left in LITERAL, APPEND_DATA, DISCARD
        self._pending: AppendMessageReached | None = None
        self._append: _AppendContext | None = None
        self._skip_tail = b""
        self._line_tag = ""
        self._last: Event | None = None
        self._eof = False
        self._mode = _Mode.COMMAND
        self._handlers: dict[_Mode, Callable[[], Result]] = {
            _Mode.COMMAND: self._on_command,
            _Mode.LITERAL: self._on_literal,
            _Mode.APPEND_PAUSED: self._on_paused,
            _Mode.APPEND_DATA: self._on_append_data,
            _Mode.DISCARD: self._on_discard,
            _Mode.SKIP: self._on_skip,
            _Mode.IDLE: self._on_idle,
            _Mode.SASL: self._on_sasl,
            _Mode.CLOSED: self._on_closed,
        }

    # ------------------------------------------------------------------ public API

    @property
    def buffered_size(self) -> int:
        """Bytes received and not consumed yet (the receive buffer)."""
        return len(self._buf)

    @property
    def command_buffer_size(self) -> int:
        """Bytes of the partly assembled command held (text plus small literals)."""
        return len(self._cmd)

    @property
    def in_append(self) -> bool:
        """True from an APPEND's first ``AppendMessageStart`` until its ``AppendEnd``,
        the error that aborts it, or ``reject_literal()``."""
        return self._append is not None

    @property
    def mode(self) -> str:
        """What the parser is doing, for logs and debugging."""
        return self._mode.value

    def receive_data(self, data: bytes) -> None:
        """Add bytes read from the client; ``b""`` means the client closed its side.

        Nothing is parsed here: call :meth:`next_event`.

        Raises:
            LocalProtocolError: Data after the end of input was signalled.
        """
        if not data:
            self._eof = True
            return
        if self._eof:
            raise LocalProtocolError("receive_data() called after end of input")
        self._buf += data

    def next_event(self) -> Event | type[NEED_DATA]:
        """Return the next event, or :data:`NEED_DATA` if the held bytes make none.

        After end of input, returns :class:`ConnectionClosed` (every time).

        Raises:
            RemoteProtocolError: The client's bytes break the grammar or a limit.  The
                parser has already resynchronised; answer BAD and call again.
            LocalProtocolError: An APPEND literal waits for :meth:`accept_literal` or
                :meth:`reject_literal`.
        """
        while True:
            result = self._handlers[self._mode]()
            if result is None:
                continue
            if result is NEED_DATA:
                return self._end_of_input() if self._eof else NEED_DATA
            assert isinstance(result, Event)
            self._last = result
            return result

    def accept_literal(self, text: str = "Ready") -> bytes:
        """Accept the APPEND message literal announced by ``AppendMessageStart``.

        Returns:
            The continuation line to send (``b"+ Ready\\r\\n"``) for a synchronising
            literal, ``b""`` for a non-synchronising one.  The message bytes then come
            out of :meth:`next_event` as ``LiteralChunk`` events, then ``LiteralEnd``.

        Raises:
            LocalProtocolError: No APPEND literal is waiting.
        """
        pending = self._take_pending()
        self._mode = _Mode.APPEND_DATA
        self._remaining = pending.size
        return continuation(text) if pending.synchronizing else b""

    def reject_literal(self) -> None:
        """Refuse the APPEND message literal announced by ``AppendMessageStart``.

        The server sends its tagged ``NO``/``BAD`` (e.g. ``[TOOBIG]``) itself and rolls
        back any messages of this APPEND already received.  For ``{n}`` the next line is
        a new command; for ``{n+}`` the parser drops the ``n`` bytes and the rest of the
        APPEND command without producing events (as Dovecot does).

        Raises:
            LocalProtocolError: No APPEND literal is waiting.
        """
        pending = self._take_pending()
        self._append = None
        if pending.synchronizing:
            self._mode = _Mode.COMMAND
        else:
            self._mode = _Mode.DISCARD
            self._remaining = pending.size

    def expect_idle_done(self) -> None:
        """Read the next line as the end of IDLE (call after sending ``+ idling``).

        ``DONE`` gives :class:`IdleDone`; any other line raises
        :class:`RemoteProtocolError` ("Expected DONE") with the IDLE's tag.  Either way
        the parser then reads commands again.

        Raises:
            LocalProtocolError: The last event was not an ``Idle`` command.
        """
        last = self._last
        if not isinstance(last, Idle) or not self._between_commands():
            raise LocalProtocolError("expect_idle_done() must follow an Idle event")
        self._line_tag = last.tag
        self._mode = _Mode.IDLE

    def expect_sasl_response(self) -> None:
        """Read the next line as a SASL response (call after sending a ``+`` challenge).

        The line gives :class:`SaslResponse` (base64-decoded; ``*`` → ``cancelled``);
        invalid base64 raises :class:`RemoteProtocolError` with the AUTHENTICATE tag.
        Then the parser reads commands again: call this once per challenge.

        Raises:
            LocalProtocolError: The last event was neither ``Authenticate`` nor a
                ``SaslResponse``.
        """
        last = self._last
        if not isinstance(last, Authenticate | SaslResponse) or not self._between_commands():
            raise LocalProtocolError("expect_sasl_response() must follow AUTHENTICATE")
        self._line_tag = last.tag
        self._mode = _Mode.SASL

    # ------------------------------------------------------------------ helpers

    def _between_commands(self) -> bool:
        return self._mode is _Mode.COMMAND and not self._cmd and self._append is None

    def _take_pending(self) -> AppendMessageReached:
        pending = self._pending
        if self._mode is not _Mode.APPEND_PAUSED or pending is None:
            raise LocalProtocolError("no APPEND literal is waiting for a decision")
        self._pending = None
        return pending

    def _reset_command(self) -> None:
        self._cmd.clear()
        self._literal_bytes = 0
        self._cmd_tag = ""
        self._cmd_name = None

    def _fail(
        self,
        message: str,
        *,
        tag: str | None,
        command: str | None = None,
        code: str | None = None,
        literal: tuple[int, bool] | None = None,
        skip_line: bool = False,
    ) -> RemoteProtocolError:
        """Resynchronise after a client error and return the exception to raise.

        Args:
            literal: The literal header that ended the consumed segment, if any.
            skip_line: The current line has not been consumed to its LF yet.
        """
        aborted = self._append is not None
        if self._append is not None:
            tag = self._append.tag
            command = "APPEND"
            self._append = None
        self._reset_command()
        self._scan = 0
        if skip_line:
            self._mode = _Mode.SKIP
        elif literal is not None and not literal[1]:
            self._mode = _Mode.DISCARD
            self._remaining = literal[0]
        else:
            self._mode = _Mode.COMMAND
        return RemoteProtocolError(
            message, tag=tag, command=command, code=code, aborted_append=aborted
        )

    def _from_parse_error(
        self, err: ParseError, literal: tuple[int, bool] | None
    ) -> RemoteProtocolError:
        return self._fail(
            err.message, tag=err.tag, command=err.command, code=err.code, literal=literal
        )

    def _line_too_long(self, tag: str | None) -> RemoteProtocolError:
        if tag is None:
            tag = _guess_tag(bytes(self._cmd[:80]) or bytes(self._buf[:80]))
        self._skip_tail = bytes(self._buf[-_TAIL:])
        self._buf.clear()
        return self._fail("Command line too long", tag=tag, skip_line=True)

    def _take_segment(self, tag: str | None = None) -> bytes | None:
        """The next line segment (through its LF), or None if there is no LF yet.

        Args:
            tag: The tag to report if the line is too long (default: read it).

        Raises:
            RemoteProtocolError: The unterminated line already exceeds the limit.
        """
        buf = self._buf
        lf = buf.find(b"\n", self._scan)
        text_so_far = len(self._cmd) - self._literal_bytes
        if lf < 0:
            self._scan = len(buf)
            if text_so_far + len(buf) > self.max_line_length:
                raise self._line_too_long(tag)
            return None
        self._scan = 0
        if text_so_far + lf + 1 > self.max_line_length:
            if tag is None:
                tag = _guess_tag(bytes(self._cmd[:80]) or bytes(buf[:80]))
            literal = literal_at_end(bytes(buf[max(0, lf + 1 - _TAIL) : lf + 1]))
            del buf[: lf + 1]
            raise self._fail("Command line too long", tag=tag, literal=literal)
        segment = bytes(buf[: lf + 1])
        del buf[: lf + 1]
        return segment

    def _end_of_input(self) -> Event:
        self._mode = _Mode.CLOSED
        self._buf.clear()
        self._reset_command()
        if self._append is not None:
            tag = self._append.tag
            self._append = None
            raise RemoteProtocolError(
                "Connection closed in the middle of APPEND",
                tag=tag,
                command="APPEND",
                aborted_append=True,
            )
        return ConnectionClosed()

    # ------------------------------------------------------------------ mode handlers

    def _on_command(self) -> Result:
        segment = self._take_segment()
        if segment is None:
            return NEED_DATA
        literal = literal_at_end(segment)
        self._cmd += segment
        ctx = self._append
        name = self._cmd_name
        if literal is not None and ctx is None and name is not None and name != "APPEND":
            # A later literal of a command the grammar has already accepted up to its
            # first literal: collect without parsing again, so that the work stays
            # linear in the command's size (the final parse checks everything).
            return self._start_literal(self._cmd_tag, name, literal)
        data = bytes(self._cmd)
        try:
            if ctx is None:
                command: Command | None = parse_command(data)
            else:
                parse_append_tail(data, ctx.tag, ctx.mailbox, ctx.count)
                command = None
        except NeedLiteral as need:
            if literal is None:  # pragma: no cover - literal_at_end agrees with the lexer
                raise self._fail("Invalid literal", tag=need.tag, command=need.command) from None
            self._cmd_tag, self._cmd_name = need.tag or "", need.command
            return self._start_literal(self._cmd_tag, need.command, literal)
        except AppendMessageReached as reached:
            return self._start_append_message(reached)
        except ParseError as err:
            raise self._from_parse_error(err, literal) from None
        if literal is not None:  # pragma: no cover - the grammar never ends on a literal
            raise self._fail("Unexpected literal", tag=_guess_tag(data), literal=literal)
        self._reset_command()
        if command is not None:
            return command
        assert ctx is not None
        self._append = None
        return AppendEnd(ctx.tag, ctx.count)

    def _start_literal(self, tag: str, command: str | None, literal: tuple[int, bool]) -> Result:
        size, synchronizing = literal
        if self._literal_bytes + size > self.max_literal_size:
            raise self._fail(
                "Literal too large", tag=tag, command=command, code="TOOBIG", literal=literal
            )
        self._literal_bytes += size
        self._remaining = size
        self._mode = _Mode.LITERAL
        if synchronizing:
            return ContinuationRequired(tag, size)
        return None

    def _start_append_message(self, reached: AppendMessageReached) -> Result:
        ctx = self._append
        tag = reached.tag or ""
        if ctx is None:
            ctx = self._append = _AppendContext(tag, reached.mailbox)
        ctx.count += 1
        self._reset_command()
        self._pending = reached
        self._mode = _Mode.APPEND_PAUSED
        return AppendMessageStart(
            ctx.tag,
            ctx.mailbox,
            reached.flags,
            reached.date,
            reached.size,
            reached.synchronizing,
            reached.index,
        )

    def _on_literal(self) -> Result:
        buf = self._buf
        n = min(self._remaining, len(buf))
        if n:
            self._cmd += buf[:n]
            del buf[:n]
            self._remaining -= n
        if self._remaining:
            return NEED_DATA
        self._scan = 0
        self._mode = _Mode.COMMAND
        return None

    def _on_paused(self) -> Result:
        raise LocalProtocolError("call accept_literal() or reject_literal() first")

    def _on_append_data(self) -> Result:
        if self._remaining == 0:
            self._scan = 0
            self._mode = _Mode.COMMAND
            return LiteralEnd()
        buf = self._buf
        if not buf:
            return NEED_DATA
        n = min(self._remaining, len(buf))
        if n == len(buf):
            chunk = bytes(buf)
            buf.clear()
        else:
            chunk = bytes(buf[:n])
            del buf[:n]
        self._remaining -= n
        return LiteralChunk(chunk)

    def _on_discard(self) -> Result:
        buf = self._buf
        n = min(self._remaining, len(buf))
        del buf[:n]
        self._remaining -= n
        if self._remaining:
            return NEED_DATA
        self._mode = _Mode.SKIP
        return None

    def _on_skip(self) -> Result:
        buf = self._buf
        lf = buf.find(b"\n")
        if lf < 0:
            if buf:
                self._skip_tail = (self._skip_tail + bytes(buf[-_TAIL:]))[-_TAIL:]
                buf.clear()
            return NEED_DATA
        tail = (self._skip_tail + bytes(buf[max(0, lf + 1 - _TAIL) : lf + 1]))[-_TAIL:]
        del buf[: lf + 1]
        self._skip_tail = b""
        self._scan = 0
        literal = literal_at_end(tail)
        if literal is not None and not literal[1]:
            self._mode = _Mode.DISCARD
            self._remaining = literal[0]
        else:
            self._mode = _Mode.COMMAND
        return None

    def _read_mode_line(self) -> bytes | None:
        segment = self._take_segment(self._line_tag)
        if segment is None:
            return None
        self._mode = _Mode.COMMAND
        return segment

    def _on_idle(self) -> Result:
        segment = self._read_mode_line()
        if segment is None:
            return NEED_DATA
        if _strip_eol(segment).upper() == b"DONE":
            return IdleDone(self._line_tag)
        raise self._fail(
            "Expected DONE", tag=self._line_tag, command="IDLE", literal=literal_at_end(segment)
        )

    def _on_sasl(self) -> Result:
        segment = self._read_mode_line()
        if segment is None:
            return NEED_DATA
        line = _strip_eol(segment)
        if line == b"*":
            return SaslResponse(self._line_tag, b"", cancelled=True)
        try:
            return SaslResponse(self._line_tag, decode_base64(line))
        except ParseError as err:
            raise self._fail(
                err.message,
                tag=self._line_tag,
                command="AUTHENTICATE",
                literal=literal_at_end(segment),
            ) from None

    def _on_closed(self) -> Result:
        return ConnectionClosed()
