"""Token readers for the IMAP command grammar (RFC 3501 §9), over one complete buffer.

IMAP's lexical structure depends on context (``]`` ends an atom but not an astring,
``*`` is a wildcard in LIST and a number in sequence sets, ``BODY[...]`` is a name with
brackets), so there is no separate token stream: the grammar (:mod:`.grammar`) calls
the :class:`Reader` method for what it expects at that point.  Each method matches a
precompiled regular expression at the current position, so a simple command costs a
handful of regex calls, never a Python loop per byte.

The buffer holds the command as it arrived on the wire, literals inline
(``{5}\\r\\nhello``).  A literal header at the very end of the buffer means its bytes
have not arrived yet: :meth:`Reader.literal` raises :class:`NeedLiteral`, which the
streaming parser uses to classify the literal *before* reading it.  Every other problem
raises :class:`ParseError`; no other exception escapes a Reader method.
"""

from __future__ import annotations

import binascii
import datetime as dt
import re
from collections.abc import Callable
from typing import TypeVar

from .sequence import MAX_NUMBER, SequenceSet

T = TypeVar("T")

MAX_MODSEQ = 2**63 - 1
"""Largest ``mod-sequence-value`` (RFC 7162)."""

_CR, _LF, _SP, _DQUOTE, _LPAREN, _RPAREN, _LBRACE = 0x0D, 0x0A, 0x20, 0x22, 0x28, 0x29, 0x7B

# ATOM-CHAR: any CHAR except atom-specials "(" ")" "{" SP CTL "%" "*" DQUOTE "\" "]".
ATOM_RE = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\\]]+')
ASTRING_ATOM_RE = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\]+')  # ASTRING-CHAR adds "]"
TAG_RE = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\+]+')  # ASTRING-CHAR minus "+"
_LIST_MAILBOX = re.compile(rb'[^\x00-\x20\x7f-\xff(){"\\]+')  # list-char
_QUOTED = re.compile(rb'"((?:[^"\\\x00\r\n\x80-\xff]++|\\["\\])*+)"')
_LITERAL = re.compile(rb"\{(\d+)(\+?)\}\r?\n")
_NUMBER = re.compile(rb"\d+")
_WORD = re.compile(rb"[A-Za-z0-9.\-]+")
_SEQSET = re.compile(rb"[0-9*]+(?::[0-9*]+)?(?:,[0-9*]+(?::[0-9*]+)?)*")
_FLAG_EXT = re.compile(rb"\\" + ATOM_RE.pattern)
_EOL = re.compile(rb"\r?\n")
_DATE = re.compile(rb"(\d{1,2})-([A-Za-z]{3})-(\d{4})")
_DATE_TIME = re.compile(
    rb'"( ?\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)"'
)
_BASE64 = re.compile(rb"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")

MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
MONTHS = {name.upper().encode("ascii"): i + 1 for i, name in enumerate(MONTH_NAMES)}

SYSTEM_FLAGS = {
    f.upper(): f for f in ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft", "\\Recent")
}

MAX_LITERAL_DIGITS = 19
"""A literal size with more digits than this is refused (it would exceed 2**63)."""


class ParseSignal(Exception):
    """Base of the parser-internal signals; carries the tag and command once known."""

    tag: str | None = None
    command: str | None = None


class ParseError(ParseSignal):
    """The bytes do not match the grammar.

    Attributes:
        message: Text for the ``BAD`` response.
        code: Optional response code name for the ``BAD``.
    """

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class NeedLiteral(ParseSignal):
    """The buffer ends with a literal header whose bytes have not arrived."""

    def __init__(self, size: int, synchronizing: bool) -> None:
        super().__init__(size, synchronizing)
        self.size = size
        self.synchronizing = synchronizing


class Reader:
    """A cursor over one command buffer.

    Attributes:
        data: The buffer.
        pos: Index of the next unread byte.
        depth: Current nesting depth (bounded by the grammar to keep recursion finite).
    """

    __slots__ = ("data", "depth", "pos")

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos
        self.depth = 0

    # -- primitives -------------------------------------------------------------------

    def peek(self) -> int:
        """The next byte, or -1 at the end of the buffer."""
        return self.data[self.pos] if self.pos < len(self.data) else -1

    def at_eol(self) -> bool:
        """True if the next bytes are the line's CRLF (or a bare LF)."""
        return self.peek() in (_CR, _LF)

    def end(self) -> None:
        """Consume the final CRLF; it must be the end of the buffer."""
        m = _EOL.match(self.data, self.pos)
        if m is None or m.end() != len(self.data):
            if self.peek() == _SP:
                raise ParseError("Unexpected extra arguments")
            raise ParseError("Invalid arguments")
        self.pos = m.end()

    def sp(self) -> None:
        """Consume exactly one SP."""
        if self.peek() != _SP:
            raise ParseError("Missing arguments" if self.at_eol() else "Expected a space")
        self.pos += 1

    def try_sp(self) -> bool:
        """Consume an SP if there is one."""
        if self.peek() == _SP:
            self.pos += 1
            return True
        return False

    def try_byte(self, byte: int) -> bool:
        """Consume ``byte`` if it is next."""
        if self.peek() == byte:
            self.pos += 1
            return True
        return False

    def expect_byte(self, byte: int) -> None:
        """Consume ``byte`` or fail."""
        if not self.try_byte(byte):
            raise ParseError(f"Expected '{chr(byte)}'")

    def match(self, pattern: re.Pattern[bytes], what: str) -> bytes:
        """Consume a match of ``pattern`` at the cursor and return it."""
        m = pattern.match(self.data, self.pos)
        if m is None or m.end() == self.pos:
            raise ParseError(f"Expected {what}")
        self.pos = m.end()
        return m.group(0)

    def word(self) -> str:
        """A keyword-like token (letters, digits, ``.``, ``-``), upper-cased."""
        return self.match(_WORD, "a keyword").decode("ascii").upper()

    def atom(self) -> bytes:
        """An ``atom``."""
        return self.match(ATOM_RE, "an atom")

    def tag(self) -> str:
        """A command ``tag``."""
        return self.match(TAG_RE, "a tag").decode("ascii")

    def number(self, maximum: int = MAX_NUMBER) -> int:
        """A ``number`` (at most ``maximum``)."""
        digits = self.match(_NUMBER, "a number")
        if len(digits) > 20 or int(digits) > maximum:
            raise ParseError("Number too large")
        return int(digits)

    def nz_number(self, maximum: int = MAX_NUMBER) -> int:
        """A non-zero ``number``."""
        value = self.number(maximum)
        if value == 0:
            raise ParseError("Expected a non-zero number")
        return value

    # -- strings ----------------------------------------------------------------------

    def quoted(self) -> bytes:
        """A ``quoted`` string, unescaped; 8-bit, NUL, CR and LF are refused."""
        m = _QUOTED.match(self.data, self.pos)
        if m is None:
            raise ParseError(self._quoted_problem())
        self.pos = m.end()
        body = m.group(1)
        if b"\\" in body:
            body = body.replace(b"\\\\", b"\x00").replace(b'\\"', b'"').replace(b"\x00", b"\\")
        return body

    def _quoted_problem(self) -> str:
        if self.peek() != _DQUOTE:
            return "Expected a quoted string"
        i = self.pos + 1
        data = self.data
        while i < len(data):
            b = data[i]
            if b == _DQUOTE:
                break
            if b == 0x5C:
                if i + 1 < len(data) and data[i + 1] in (_DQUOTE, 0x5C):
                    i += 2
                    continue
                return "Invalid escape in quoted string"
            if b >= 0x80:
                return "8-bit data in quoted string"
            if b in (0, _CR, _LF):
                break
            i += 1
        return "Missing '\"' at the end of a quoted string"

    def literal_header(self) -> tuple[int, bool]:
        """A literal header ``{n}CRLF`` / ``{n+}CRLF``: ``(size, synchronizing)``."""
        m = _LITERAL.match(self.data, self.pos)
        if m is None:
            raise ParseError("Invalid literal")
        digits = m.group(1)
        if len(digits) > MAX_LITERAL_DIGITS:
            raise ParseError("Literal size too large", "TOOBIG")
        self.pos = m.end()
        return int(digits), not m.group(2)

    def literal(self) -> bytes:
        """A ``literal`` whose bytes are in the buffer; NUL is refused (CHAR8).

        Raises:
            NeedLiteral: The header ends the buffer: the bytes have not arrived yet.
        """
        size, synchronizing = self.literal_header()
        start = self.pos
        if start + size > len(self.data) or start == len(self.data):
            raise NeedLiteral(size, synchronizing)
        self.pos = start + size
        value = self.data[start : self.pos]
        if b"\x00" in value:
            raise ParseError("NUL in literal")
        return value

    def string(self) -> bytes:
        """A ``string``: quoted or literal."""
        b = self.peek()
        if b == _DQUOTE:
            return self.quoted()
        if b == _LBRACE:
            return self.literal()
        raise ParseError("Expected a string")

    def astring(self) -> bytes:
        """An ``astring``: atom (``]`` allowed), quoted or literal."""
        b = self.peek()
        if b == _DQUOTE:
            return self.quoted()
        if b == _LBRACE:
            return self.literal()
        return self.match(ASTRING_ATOM_RE, "a string")

    def nstring(self) -> bytes | None:
        """An ``nstring``: ``NIL`` or a string."""
        if self.try_nil():
            return None
        return self.string()

    def try_nil(self) -> bool:
        """Consume ``NIL`` (any case) if it is the next whole atom."""
        m = ATOM_RE.match(self.data, self.pos)
        if m is not None and m.group(0).upper() == b"NIL":
            self.pos = m.end()
            return True
        return False

    def list_mailbox(self) -> bytes:
        """A ``list-mailbox``: list-chars (with ``%``, ``*``, ``]``) or a string."""
        b = self.peek()
        if b in (_DQUOTE, _LBRACE):
            return self.string()
        return self.match(_LIST_MAILBOX, "a mailbox pattern")

    def text_astring(self) -> str:
        """An astring decoded as UTF-8 (``surrogateescape`` keeps odd bytes)."""
        return self.astring().decode("utf-8", "surrogateescape")

    # -- structured values ------------------------------------------------------------

    def sequence_set(self, allow_saved: bool = True) -> SequenceSet:
        """A ``sequence-set`` (``$`` allowed when ``allow_saved``)."""
        if allow_saved and self.try_byte(0x24):
            return SequenceSet(saved=True)
        text = self.match(_SEQSET, "a sequence set")
        try:
            return SequenceSet.parse(text)
        except ValueError as exc:
            raise ParseError("Invalid sequence set") from exc

    def flag(self) -> str:
        """A ``flag`` (``\\System`` or keyword); system flags come back in canonical case."""
        if self.peek() == 0x5C:
            raw = self.match(_FLAG_EXT, "a flag").decode("ascii")
            return SYSTEM_FLAGS.get(raw.upper(), raw)
        return self.match(ATOM_RE, "a flag").decode("ascii")

    def flag_list(self) -> tuple[str, ...]:
        """A ``flag-list``: ``(`` [flag *(SP flag)] ``)``."""
        return self.paren_list(self.flag)

    def paren_list(self, item: Callable[[], T], allow_empty: bool = True) -> tuple[T, ...]:
        """``(`` item *(SP item) ``)``; empty allowed when ``allow_empty``."""
        self.expect_byte(_LPAREN)
        items: list[T] = []
        if self.try_byte(_RPAREN):
            if not allow_empty:
                raise ParseError("Empty list")
            return ()
        while True:
            items.append(item())
            if self.try_byte(_RPAREN):
                return tuple(items)
            self.sp()

    def date(self) -> dt.date:
        """A search ``date``: ``d-Mon-yyyy``, optionally quoted."""
        quoted = self.try_byte(_DQUOTE)
        m = _DATE.match(self.data, self.pos)
        if m is None:
            raise ParseError("Invalid date")
        self.pos = m.end()
        if quoted:
            self.expect_byte(_DQUOTE)
        month = MONTHS.get(m.group(2).upper())
        if month is None:
            raise ParseError("Invalid month in date")
        try:
            return dt.date(int(m.group(3)), month, int(m.group(1)))
        except ValueError as exc:
            raise ParseError("Invalid date") from exc

    def date_time(self) -> dt.datetime:
        """An APPEND ``date-time``: ``"dd-Mon-yyyy hh:mm:ss +zzzz"`` (timezone-aware)."""
        m = _DATE_TIME.match(self.data, self.pos)
        if m is None:
            raise ParseError("Invalid date-time")
        self.pos = m.end()
        day, mon, year, hh, mm, ss, sign, zh, zm = m.groups()
        month = MONTHS.get(mon.upper())
        if month is None or int(zh) > 23 or int(zm) > 59:
            raise ParseError("Invalid date-time")
        offset = dt.timedelta(hours=int(zh), minutes=int(zm))
        try:
            return dt.datetime(
                int(year),
                month,
                int(day),
                int(hh),
                int(mm),
                int(ss),
                tzinfo=dt.timezone(-offset if sign == b"-" else offset),
            )
        except ValueError as exc:
            raise ParseError("Invalid date-time") from exc

    def base64(self) -> bytes:
        """A base64 token (SASL-IR); ``=`` is the empty response."""
        if self.try_byte(0x3D):
            return b""
        return decode_base64(self.match(_BASE64, "base64 data"))


def decode_base64(data: bytes) -> bytes:
    """Strictly decode base64 ``data`` (length multiple of 4, canonical padding).

    Raises:
        ParseError: ``data`` is not valid base64.
    """
    m = _BASE64.fullmatch(data)
    if m is None:
        raise ParseError("Invalid base64 data")
    try:
        return binascii.a2b_base64(data, strict_mode=True)
    except binascii.Error as exc:
        raise ParseError("Invalid base64 data") from exc
