"""IMAP string forms (RFC 3501 §4.3, §9): quoted, literal, NIL.

Shared by the message-structure code (BODYSTRUCTURE, ENVELOPE) and the IMAP response
encoder.  Pure functions over bytes; no I/O.
"""

from __future__ import annotations

_QUOTED_SPECIALS = frozenset(b'"\\')
_NEEDS_LITERAL = frozenset(b"\r\n\x00") | frozenset(range(0x80, 0x100))


def needs_literal(value: bytes) -> bool:
    """True if ``value`` cannot be sent as a quoted string (CR, LF, NUL or 8-bit bytes)."""
    return any(b in _NEEDS_LITERAL for b in value)


def quoted(value: bytes) -> bytes:
    """Return ``value`` as a quoted string; ``value`` must not need a literal."""
    out = bytearray(b'"')
    for b in value:
        if b in _QUOTED_SPECIALS:
            out.append(0x5C)
        out.append(b)
    out.append(0x22)
    return bytes(out)


def literal(value: bytes) -> bytes:
    """Return ``value`` as a synchronising literal ``{n}CRLF<bytes>``."""
    return b"{%d}\r\n" % len(value) + value


def string(value: bytes | str) -> bytes:
    """Return ``value`` as an IMAP string: quoted when possible, else a literal."""
    raw = value.encode("utf-8") if isinstance(value, str) else value
    return literal(raw) if needs_literal(raw) else quoted(raw)


def nstring(value: bytes | str | None) -> bytes:
    """Return ``value`` as an IMAP nstring: ``NIL`` for None, else :func:`string`."""
    return b"NIL" if value is None else string(value)
