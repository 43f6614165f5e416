"""The DATA stream of SMTP/LMTP, decoded incrementally (sans-IO: no asyncio, no sockets).

Theory of operation
-------------------
After ``354`` the client sends the message with *dot-stuffing* (RFC 5321 §4.5.2): a line
that starts with ``.`` gets one more ``.`` in front, and the line ``.`` alone (``.CRLF``
right at the start or after a CRLF) ends the data.  :class:`DotDecoder` undoes that on
bytes fed in any split (a line may arrive in pieces, a CRLF may straddle two feeds) and
says where the data ended, so bytes the client pipelined after the final dot are left to
the caller.  Between line starts it works in bulk (``bytes.find`` for the terminator, one
``bytes.replace`` for the stuffed dots), so even a message of dot-led lines costs C time, not a
Python step per line; only a piece's first and last few bytes go through the state
table byte by byte.

States (``_BOL`` = at the beginning of a line, i.e. after CRLF or at the very start)::

    _BOL    --"."-->  _DOT      (the dot is dropped either way)
    _BOL    --else->  _MID
    _DOT    --CR--->  _DOT_CR
    _DOT    --else->  _MID      (a stuffed line: "..x" is ".x")
    _DOT_CR --LF--->  done      (the terminating ".CRLF")
    _DOT_CR --else->  _MID      (".CRx": keep the CR)
    _MID    --CRLF->  _BOL      (a bare LF does not start a line: RFC 5321 wants CRLF)
"""

from __future__ import annotations

import enum


class _State(enum.Enum):
    BOL = enum.auto()
    DOT = enum.auto()
    DOT_CR = enum.auto()
    MID = enum.auto()


# Piece endings that may be the start of a terminator or of a stuffed line.
_TAILS = (b"\r\n.\r", b"\r\n.", b"\r\n", b"\r")
_DOT = 0x2E
_CR = 0x0D
_LF = 0x0A


class DotDecoder:
    """Undo dot-stuffing and find the end of the DATA stream.

    Attributes:
        done: True once the terminating ``.CRLF`` was seen.
        size: message bytes produced so far (after unstuffing): what a size limit
            compares against.
    """

    def __init__(self) -> None:
        self._state = _State.BOL
        self._cr = False  # the last byte produced in _MID was CR
        self.done = False
        self.size = 0

    def feed(self, data: bytes | bytearray | memoryview) -> tuple[bytes, int]:
        """Decode ``data``.

        Returns:
            ``(message bytes, consumed)``: the unstuffed message bytes this feed
            produced, and how many input bytes were used.  ``consumed < len(data)`` only
            when the end of data was found: the rest belongs to the next command.

        Raises:
            ValueError: fed after :attr:`done`.
        """
        if self.done:
            raise ValueError("the DATA stream already ended")
        buf = bytes(data)
        out = bytearray()
        i = 0
        n = len(buf)
        while i < n and not self.done:
            if self._state is _State.MID and not self._cr:
                # Bulk: everything up to the terminator (or the end of this piece, less
                # a tail that may begin one) with the stuffed dots removed in C.
                t = buf.find(b"\r\n.\r\n", i)
                if t >= 0:
                    out += buf[i : t + 2].replace(b"\r\n.", b"\r\n")
                    i = t + 5
                    self.done = True
                    break
                end = n
                for tail in _TAILS:
                    if buf.endswith(tail) and n - len(tail) >= i:
                        end = n - len(tail)
                        break
                out += buf[i:end].replace(b"\r\n.", b"\r\n")
                for byte in buf[end:]:
                    self._step(byte, out)
                i = n
            else:
                self._step(buf[i], out)
                i += 1
        self.size += len(out)
        return bytes(out), i

    def _step(self, byte: int, out: bytearray) -> None:
        """One byte through the state table (used at line starts and piece edges)."""
        state = self._state
        if state is _State.BOL:
            if byte == _DOT:
                self._state = _State.DOT
                return
        elif state is _State.DOT:
            if byte == _CR:
                self._state = _State.DOT_CR
                return
        elif state is _State.DOT_CR:
            if byte == _LF:
                self.done = True
                return
            out.append(_CR)
            self._cr = True
        # _MID (or a line start that turned out to be an ordinary line)
        self._state = _State.MID
        out.append(byte)
        if byte == _LF and self._cr:
            self._state = _State.BOL
        self._cr = byte == _CR

    @property
    def at_line_start(self) -> bool:
        """True between lines (nothing of the next line seen yet)."""
        return self._state is _State.BOL


def dot_stuff(message: bytes) -> bytes:
    """Encode ``message`` for DATA (tests and clients): stuff dots, add the terminator.

    A message that does not end with CRLF gets one, as SMTP clients do.
    """
    body = message if message.endswith(b"\r\n") or not message else message + b"\r\n"
    lines = body.split(b"\r\n")
    stuffed = b"\r\n".join(b"." + ln if ln.startswith(b".") else ln for ln in lines)
    return stuffed + b".\r\n"
