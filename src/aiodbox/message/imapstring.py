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


# -- Dovecot 2.3 string rules (lib-imap/imap-quote.c) --------------------------
#
# BODYSTRUCTURE and ENVELOPE must be byte-identical to Dovecot's, which quotes
# a string unless it has CR, LF or 8-bit bytes *or more than four* quoted
# specials (then a literal is shorter), and stops at a NUL like any C string.

_DOVECOT_MAX_ESCAPES = 4
_LITERAL_ONLY = frozenset(b"\r\n") | frozenset(range(0x80, 0x100))


def _c_string(value: bytes) -> bytes:
    nul = value.find(b"\0")
    return value if nul < 0 else value[:nul]


def dovecot_string(value: bytes) -> bytes:
    """Dovecot's ``imap_append_string()``: quoted, or a literal when needed."""
    value = _c_string(value)
    escapes = value.count(b'"') + value.count(b"\\")
    if escapes > _DOVECOT_MAX_ESCAPES or not _LITERAL_ONLY.isdisjoint(value):
        return literal(value)
    return quoted(value)


def dovecot_nstring(value: bytes | None) -> bytes:
    """Dovecot's ``imap_append_nstring()``: ``NIL`` for None."""
    return b"NIL" if value is None else dovecot_string(value)


def dovecot_nstring_nolf(value: bytes | None) -> bytes:
    """Dovecot's ``imap_append_nstring_nolf()``: line ends removed first.

    A CR or LF is dropped; where the next line does not start with white space
    a single space takes its place.
    """
    if value is None:
        return b"NIL"
    value = _c_string(value)
    if b"\r" not in value and b"\n" not in value:
        return dovecot_string(value)
    out = bytearray()
    n = len(value)
    for i, c in enumerate(value):
        if c not in (0x0D, 0x0A):
            out.append(c)
        elif i + 1 < n and value[i + 1] not in (0x20, 0x09, 0x0D, 0x0A):
            out.append(0x20)
    return dovecot_string(bytes(out))


_HUMAN_LWSP = frozenset(b"\r\n\t ")
_HUMAN_MODIFY = frozenset(b'\r\n\t"\\\0') | frozenset(range(0x80, 0x100))


def string_for_humans(value: bytes) -> bytes:
    """Dovecot's ``imap_append_string_for_humans()`` (subjects, display names).

    White space runs (TAB, CR, LF, SP) become one space, leading and trailing
    white space is dropped, NUL becomes 0x80; the result is sent quoted when
    nothing had to change and it needs no escaping, else as a literal.
    """
    unchanged = (
        _HUMAN_MODIFY.isdisjoint(value)
        and b"  " not in value
        and not value.startswith(b" ")
        and not value.endswith(b" ")
    )
    if unchanged:
        return b'"' + value + b'"'
    out = bytearray()
    last_lwsp = True
    for c in value:
        if c == 0:
            out.append(0x80)
            last_lwsp = False
        elif c in _HUMAN_LWSP:
            if not last_lwsp:
                out.append(0x20)
            last_lwsp = True
        else:
            out.append(c)
            last_lwsp = False
    if out.endswith(b" "):
        del out[-1]
    if not out:
        return b'""'
    return literal(bytes(out))
