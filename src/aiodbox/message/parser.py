"""Push MIME parser that counts sizes and lines exactly as Dovecot 2.3 does.

Theory of operation
-------------------
Bytes are pushed with :meth:`MessageParser.feed`; the parser keeps only the
unprocessed tail (normally less than one line) and walks a small state machine,
mirroring Dovecot's ``lib-mail/message-parser.c``:

``HEADER``
    One physical line at a time.  A line starting with SP/TAB continues the
    pending field.  An empty line ends the header (``eoh``); if the part is a
    multipart with a boundary its boundary is pushed *now*, so that a later
    ``--boundary`` line can be told apart from an enclosing one with the same
    prefix.  A line that is an enclosing part's boundary also ends the header;
    the line end before it then moves from this part's header size to the
    parent's body size, as Dovecot does.
``BODY_BOUNDARY``
    Only lines that start with ``--`` can end the body, so the scanner jumps
    between ``b"\\n--"`` hits with ``bytes.find`` and counts everything else
    with ``bytes.count`` (no per-byte Python loop).  A boundary line owns the
    ``[CR]LF`` before it unless it is the first line of the body.  Boundary
    matching is by prefix, newest boundary first, longest match wins.
``BODY_EOF``
    Everything up to the end of input belongs to the current part.
``SKIP_BOUNDARY_LINE``
    The rest of a boundary line; then either a new MIME part begins (its header
    is parsed next) or the multipart's epilogue follows.

``message/rfc822`` parts get one child, the enclosed message, whose header
starts right where the part's body starts.  Dovecot's limits apply: at most 100
nested and 10 000 parts in all; past them a part is flagged ``OVERFLOW`` and
its body is kept as opaque bytes.  Sizes are kept both *physical* (bytes as
given) and *virtual* (every bare LF counted as CRLF), plus a count of LFs: the
BODYSTRUCTURE numbers are the body's virtual size and line count.

The parser never raises on message content: any bytes parse to some tree.

Differences from Dovecot kept on purpose
----------------------------------------
* A header line is always taken whole.  Dovecot splits lines longer than its
  input buffer into pieces; for such (megabyte) lines the colon or a boundary
  could be found differently.  Header lines are not length-limited here.
* A ``--`` line is classified from its first 86 bytes (or its LF), which is
  what Dovecot decides on too; only the buffering differs.
* Dovecot's HAS_NULS and BINARY flags are not tracked (they shape no FETCH
  answer of this layer).
* Feed the bytes as stored.  Dovecot serves a stored NUL as 0x80 in
  ``BODY[]`` but parses the stored NUL (which then ends tokens and becomes
  U+FFFD in values); fed the served 0x80 instead, rare answers differ.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from aiodbox.message.headers import HeaderField, make_field
from aiodbox.message.rfc822 import Rfc822Scanner, parse_parameters

MAX_NESTED_PARTS = 100
MAX_TOTAL_PARTS = 10_000
BOUNDARY_MAX_LEN = 80
_BOUNDARY_END_MAX_LEN = BOUNDARY_MAX_LEN + 4

_CR, _LF = 0x0D, 0x0A


class PartFlags(enum.Flag):
    """Dovecot's ``message_part_flags`` (the subset that shapes output)."""

    NONE = 0
    MULTIPART = enum.auto()
    MULTIPART_DIGEST = enum.auto()
    MESSAGE_RFC822 = enum.auto()
    TEXT = enum.auto()
    IS_MIME = enum.auto()
    OVERFLOW = enum.auto()


@dataclass(frozen=True, slots=True)
class Size:
    """Size of a header or body: physical bytes, CRLF-counted bytes, LFs."""

    physical: int = 0
    virtual: int = 0
    lines: int = 0


@dataclass(frozen=True, slots=True)
class MessagePart:
    """One node of the MIME tree, as found after the whole input was seen.

    Attributes:
        offset: Physical offset of the part's header in the message.
        header_size: Size of the header, the terminating empty line included.
        body_size: Size of the body (for a multipart: every child, boundary
            line, preamble and epilogue; for message/rfc822: the enclosed
            message).
        flags: Dovecot's classification of the part.
        headers: The part's header fields in order.
        eoh: The empty line that ended the header (``b""`` if none).
        children: Sub-parts (multipart) or the enclosed message (rfc822).
    """

    offset: int
    header_size: Size
    body_size: Size
    flags: PartFlags
    headers: tuple[HeaderField, ...]
    eoh: bytes
    children: tuple[MessagePart, ...]

    @property
    def body_offset(self) -> int:
        """Physical offset of the first body byte."""
        return self.offset + self.header_size.physical

    @property
    def end_offset(self) -> int:
        """Physical offset just past the body."""
        return self.body_offset + self.body_size.physical

    def walk(self) -> list[MessagePart]:
        """This part and all its descendants, depth first."""
        out = [self]
        for child in self.children:
            out.extend(child.walk())
        return out


@dataclass(frozen=True, slots=True)
class PartInfo:
    """What a listener learns when a part's header is complete.

    Attributes:
        index: Creation order of the part (0 is the message itself).
        parent: Index of the parent part, or -1 for the message.
        flags: The part's final flags.
        headers: The part's header fields.
    """

    index: int
    parent: int
    flags: PartFlags
    headers: tuple[HeaderField, ...]


class ParserListener(Protocol):
    """Receives parse events as they happen (all optional to act on)."""

    def on_headers(self, info: PartInfo) -> None:
        """A part's header is complete (its body comes next)."""

    def on_body(self, index: int, data: bytes) -> None:
        """Body bytes of a leaf part (never multipart preamble/epilogue)."""

    def on_part_end(self, index: int) -> None:
        """No more body bytes will come for this part."""


class _State(enum.Enum):
    HEADER = enum.auto()
    BODY_BOUNDARY = enum.auto()
    BODY_EOF = enum.auto()
    SKIP_BOUNDARY_LINE = enum.auto()
    MIME_HEADER_INIT = enum.auto()
    RFC822_INIT = enum.auto()


class _Part:
    __slots__ = (
        "body",
        "children",
        "eoh",
        "flags",
        "header",
        "headers",
        "index",
        "offset",
        "parent",
    )

    def __init__(self, parent: _Part | None, offset: int, index: int) -> None:
        self.parent = parent
        self.offset = offset
        self.index = index
        self.flags = PartFlags.NONE
        self.header = [0, 0, 0]  # physical, virtual, lines
        self.body = [0, 0, 0]
        self.headers: list[HeaderField] = []
        self.eoh = b""
        self.children: list[_Part] = []

    def freeze(self) -> MessagePart:
        return MessagePart(
            offset=self.offset,
            header_size=Size(*self.header),
            body_size=Size(*self.body),
            flags=self.flags,
            headers=tuple(self.headers),
            eoh=self.eoh,
            children=tuple(c.freeze() for c in self.children),
        )


class _Boundary:
    __slots__ = ("epilogue", "part", "text")

    def __init__(self, part: _Part, text: bytes) -> None:
        self.part = part
        self.text = text
        self.epilogue = False


_NEED_MORE = object()


class MessageParser:
    """Incremental MIME parser (sans-IO).

    Feed the message exactly as IMAP serves it (``BODY[]``) in chunks of any
    size, then call :meth:`finish`.  Memory held is the unparsed tail of the
    input (normally under one line) plus the header fields of the parts.

    Args:
        listener: Optional receiver of header/body events, for decoding and
            search while the bytes stream past.
    """

    def __init__(self, listener: ParserListener | None = None) -> None:
        self._listener = listener
        self._buf = bytearray()
        self._base = 0  # absolute offset of _buf[0]
        self._pos = 0  # index in _buf of the next unprocessed byte
        self._eof = False
        self._result: MessagePart | None = None
        self._count = 1
        self._root = _Part(None, 0, 0)
        self._part = self._root
        self._nested = 0
        self._boundaries: list[_Boundary] = []  # newest last
        self._state = _State.HEADER
        self._last_chr = _LF
        self._first_line = True
        self._scan_from = 0
        self._header_init()

    # -- public API --------------------------------------------------------

    def feed(self, chunk: bytes) -> None:
        """Push the next bytes of the message.

        Raises:
            RuntimeError: If called after :meth:`finish`.
        """
        if self._eof:
            raise RuntimeError("feed() after finish()")
        if not chunk:
            return
        self._buf += chunk
        self._run()
        self._compact()

    def finish(self) -> MessagePart:
        """Declare the end of input and return the finished part tree.

        Calling it again returns the same tree.
        """
        if self._result is None:
            self._eof = True
            self._run()
            while self._part.parent is not None:
                self._finish_part()
            self._emit_end(self._root)
            self._result = self._root.freeze()
            self._buf = bytearray()
        return self._result

    @property
    def offset(self) -> int:
        """Number of input bytes fully processed so far."""
        return self._base + self._pos

    # -- driver ------------------------------------------------------------

    def _compact(self) -> None:
        if self._pos > 65536 or self._pos * 2 > len(self._buf):
            del self._buf[: self._pos]
            self._base += self._pos
            self._scan_from = max(0, self._scan_from - self._pos)
            self._pos = 0

    def _run(self) -> None:
        steps = {
            _State.HEADER: self._step_header,
            _State.BODY_BOUNDARY: self._step_body_boundary,
            _State.BODY_EOF: self._step_body_eof,
            _State.SKIP_BOUNDARY_LINE: self._step_skip_boundary_line,
            _State.MIME_HEADER_INIT: self._step_mime_header_init,
            _State.RFC822_INIT: self._step_rfc822_init,
        }
        while steps[self._state]():
            pass

    # -- part bookkeeping ----------------------------------------------------

    def _append_part(self) -> None:
        parent = self._part
        offset = parent.offset + parent.header[0] + parent.body[0]
        part = _Part(parent, offset, self._count)
        self._count += 1
        parent.children.append(part)
        self._part = part
        self._nested += 1

    def _finish_part(self) -> None:
        part = self._part
        parent = part.parent
        assert parent is not None
        for i in range(3):
            parent.body[i] += part.body[i] + part.header[i]
        self._nested -= 1
        self._emit_end(part)
        self._part = parent

    def _emit_end(self, part: _Part) -> None:
        if self._listener is not None:
            self._listener.on_part_end(part.index)

    def _too_many_nested(self) -> bool:
        return self._nested + 1 >= MAX_NESTED_PARTS

    # -- boundaries ----------------------------------------------------------

    def _boundary_at(self, q: int) -> object:
        """Check the line starting at buffer index ``q`` for a boundary.

        Returns the matching :class:`_Boundary`, None, or ``_NEED_MORE``.
        """
        buf = self._buf
        avail = len(buf) - q
        if avail < 2:
            return None if self._eof else _NEED_MORE
        if buf[q] != 0x2D or buf[q + 1] != 0x2D:
            return None
        if self._count >= MAX_TOTAL_PARTS:
            self._part.flags |= PartFlags.OVERFLOW
            return None
        start = q + 2
        size = avail - 2
        lf = buf.find(b"\n", start, start + _BOUNDARY_END_MAX_LEN + 2)
        trailing_dashes = False
        if lf < 0:
            if size + 2 < _BOUNDARY_END_MAX_LEN and not self._eof:
                return _NEED_MORE
            find_size = min(size, _BOUNDARY_END_MAX_LEN)
        else:
            find_size = lf - start
            if find_size > 0 and buf[start + find_size - 1] == _CR:
                find_size -= 1
            if find_size > 2 and buf[start + find_size - 2 : start + find_size] == b"--":
                trailing_dashes = True
        best: _Boundary | None = None
        for b in reversed(self._boundaries):
            n = len(b.text)
            if (
                n <= find_size
                and buf[start : start + n] == b.text
                and (best is None or len(best.text) < n)
            ):
                best = b
                if n == find_size or (trailing_dashes and n == find_size - 2):
                    break
        if best is None:
            return None
        n = len(best.text)
        best.epilogue = size >= n + 2 and buf[start + n : start + n + 2] == b"--"
        return best

    def _part_finish(self, boundary: _Boundary, q: int, strip: int) -> None:
        """A boundary line starts at ``q``; ``strip`` line-end bytes precede it."""
        while self._part is not boundary.part:
            self._finish_part()
        idx = self._boundaries.index(boundary)
        del self._boundaries[idx if boundary.epilogue else idx + 1 :]
        length = strip + 2 + len(boundary.text) + (2 if boundary.epilogue else 0)
        self._add_body(q - strip, q - strip + length, emit=False)
        self._pos = q - strip + length
        self._scan_from = self._pos
        self._state = _State.SKIP_BOUNDARY_LINE

    # -- header --------------------------------------------------------------

    def _header_init(self) -> None:
        self._pending: list[bytes] = []
        self._prev_nl = 0
        self._seen_content_type = False
        self._last_boundary: bytes | None = None
        self._multipart = False

    def _add_header_line(self, line: bytes) -> None:
        h = self._part.header
        n = len(line)
        h[0] += n
        h[1] += n
        if line.endswith(b"\n"):
            h[2] += 1
            if not line.endswith(b"\r\n"):
                h[1] += 1
            self._prev_nl = 2 if line.endswith(b"\r\n") else 1
        else:
            self._prev_nl = 0

    def _flush_field(self) -> None:
        if not self._pending:
            return
        field = make_field(self._pending)
        self._pending = []
        part = self._part
        part.headers.append(field)
        name = field.name.lower()
        if name == b"mime-version":
            part.flags |= PartFlags.IS_MIME
        elif name == b"content-type":
            part.flags |= PartFlags.IS_MIME
            self._parse_content_type(field.value)

    def _parse_content_type(self, value: bytes) -> None:
        if self._seen_content_type:
            return
        self._seen_content_type = True
        scanner = Rfc822Scanner(value)
        scanner.skip_lwsp()
        text = bytearray()
        ret = scanner.parse_content_type(text)
        ctype = bytes(text).lower()
        part = self._part
        if ctype == b"message/rfc822":
            part.flags |= PartFlags.MESSAGE_RFC822
        elif ctype[:4] == b"text" and (len(ctype) == 4 or ctype[4:5] == b"/"):
            part.flags |= PartFlags.TEXT
        elif ctype[:10] == b"multipart/":
            part.flags |= PartFlags.MULTIPART
            if ctype[10:] == b"digest":
                part.flags |= PartFlags.MULTIPART_DIGEST
        if ret < 0 or not part.flags & PartFlags.MULTIPART or self._last_boundary is not None:
            return
        for key, val in parse_parameters(scanner):
            if key.lower() == b"boundary":
                self._last_boundary = val[:BOUNDARY_MAX_LEN]
                break

    def _step_header(self) -> bool:
        buf = self._buf
        while True:
            pos = self._pos
            nl = buf.find(b"\n", max(pos, self._scan_from))
            if nl < 0:
                if not self._eof:
                    self._scan_from = len(buf)
                    return False
                line = bytes(buf[pos:])
            else:
                line = bytes(buf[pos : nl + 1])
            self._scan_from = 0
            if not line:
                self._flush_field()
                self._end_headers()
                return True
            if self._pending and line[0] in (0x20, 0x09):
                self._pending.append(line)
                self._add_header_line(line)
                self._pos = pos + len(line)
                continue
            if self._pending:
                self._flush_field()
            if line in (b"\r\n", b"\n"):
                if self._last_boundary is not None and self._part.flags & PartFlags.IS_MIME:
                    if not self._too_many_nested():
                        self._boundaries.append(_Boundary(self._part, self._last_boundary))
                        self._multipart = True
                    else:
                        self._part.flags |= PartFlags.OVERFLOW
                        self._part.flags &= ~PartFlags.MULTIPART
                self._add_header_line(line)
                self._part.eoh = line
                self._pos = pos + len(line)
                self._end_headers()
                return True
            if self._boundaries:
                found = self._boundary_at(pos)
                if found is _NEED_MORE:
                    return False
                if isinstance(found, _Boundary) and found.part is not self._part:
                    self._move_newline_to_parent()
                    self._end_headers()
                    return True
            self._pending.append(line)
            self._add_header_line(line)
            self._pos = pos + len(line)
            if nl < 0:
                self._flush_field()
                self._end_headers()
                return True

    def _move_newline_to_parent(self) -> None:
        if self._prev_nl <= 0:
            return
        part = self._part
        parent = part.parent
        assert parent is not None
        part.header[0] -= self._prev_nl
        part.header[1] -= 2
        part.header[2] -= 1
        parent.body[0] += self._prev_nl
        parent.body[1] += 2
        parent.body[2] += 1

    def _end_headers(self) -> None:
        part = self._part
        if not part.flags & PartFlags.IS_MIME:
            part.flags = PartFlags.NONE
        self._last_boundary = None
        if not self._seen_content_type or not part.flags & PartFlags.IS_MIME:
            parent = part.parent
            if parent is not None and parent.flags & PartFlags.MULTIPART_DIGEST:
                part.flags |= PartFlags.MESSAGE_RFC822
            else:
                part.flags |= PartFlags.TEXT
        self._last_chr = _LF
        self._first_line = True
        self._scan_from = self._pos
        if self._multipart:
            self._multipart = False
            self._state = _State.BODY_BOUNDARY
        elif not part.flags & PartFlags.MESSAGE_RFC822:
            self._state = _State.BODY_BOUNDARY if self._boundaries else _State.BODY_EOF
        elif not self._too_many_nested() and self._count < MAX_TOTAL_PARTS:
            self._state = _State.RFC822_INIT
        else:
            part.flags &= ~PartFlags.MESSAGE_RFC822
            part.flags |= PartFlags.OVERFLOW
            self._state = _State.BODY_BOUNDARY if self._boundaries else _State.BODY_EOF
        if self._listener is not None:
            parent_index = part.parent.index if part.parent is not None else -1
            self._listener.on_headers(
                PartInfo(part.index, parent_index, part.flags, tuple(part.headers))
            )

    def _step_mime_header_init(self) -> bool:
        self._append_part()
        self._part.flags |= PartFlags.IS_MIME
        self._header_init()
        self._state = _State.HEADER
        return True

    def _step_rfc822_init(self) -> bool:
        self._append_part()
        self._header_init()
        self._state = _State.HEADER
        return True

    # -- body ------------------------------------------------------------------

    def _add_body(self, a: int, b: int, *, emit: bool = True) -> None:
        if b <= a:
            return
        buf = self._buf
        n = b - a
        lines = buf.count(b"\n", a, b)
        crlf = buf.count(b"\r\n", a, b)
        if buf[a] == _LF and self._last_chr == _CR:
            crlf += 1
        body = self._part.body
        body[0] += n
        body[1] += n + lines - crlf
        body[2] += lines
        self._last_chr = buf[b - 1]
        if emit and self._listener is not None and not self._part.flags & PartFlags.MULTIPART:
            self._listener.on_body(self._part.index, bytes(buf[a:b]))

    def _step_body_eof(self) -> bool:
        end = len(self._buf)
        self._add_body(self._pos, end)
        self._pos = end
        return False

    def _step_body_boundary(self) -> bool:
        buf = self._buf
        if self._first_line:
            found = self._boundary_at(self._pos)
            if found is _NEED_MORE:
                return False
            if isinstance(found, _Boundary):
                self._part_finish(found, self._pos, 0)
                return True
            self._first_line = False
            self._scan_from = self._pos
        while True:
            hit = buf.find(b"\n--", max(self._pos, self._scan_from))
            if hit < 0:
                break
            q = hit + 1
            found = self._boundary_at(q)
            strip = 2 if hit > self._pos and buf[hit - 1] == _CR else 1
            if found is _NEED_MORE:
                self._add_body(self._pos, q - strip)
                self._pos = q - strip
                self._scan_from = self._pos
                return False
            if isinstance(found, _Boundary):
                self._add_body(self._pos, q - strip)
                self._part_finish(found, q, strip)
                self._scan_from = 0
                return True
            self._scan_from = q
        end = len(buf)
        if self._eof:
            self._add_body(self._pos, end)
            self._pos = end
            return False
        # Keep a possible "[CR]LF-" start of a boundary line for the next feed.
        keep = end
        for i in range(max(self._pos, end - 3), end):
            if buf[i] in (_CR, _LF):
                keep = i
                break
        self._add_body(self._pos, keep)
        self._pos = keep
        self._scan_from = keep
        return False

    def _step_skip_boundary_line(self) -> bool:
        buf = self._buf
        nl = buf.find(b"\n", self._pos)
        if nl < 0:
            end = len(buf)
            self._add_body(self._pos, end, emit=False)
            self._pos = end
            return False
        self._add_body(self._pos, nl + 1, emit=False)
        self._pos = nl + 1
        self._first_line = True
        if not self._boundaries or self._boundaries[-1].part is not self._part:
            self._state = _State.BODY_BOUNDARY if self._boundaries else _State.BODY_EOF
        else:
            self._state = _State.MIME_HEADER_INIT
        return True


def parse_message(data: bytes | Sequence[bytes]) -> MessagePart:
    """Parse a whole message (or a sequence of chunks) in one call."""
    parser = MessageParser()
    if isinstance(data, bytes | bytearray):
        parser.feed(bytes(data))
    else:
        for chunk in data:
            parser.feed(chunk)
    return parser.finish()
