"""RFC 2047 encoded-word decoding for header values (search, display).

``decode_header_value`` turns a raw (possibly folded) header value into text:
folding is removed, ``=?charset?B|Q?...?=`` words are decoded (white space
between two adjacent encoded words dropped, adjacent words in one charset
joined before decoding so a character split across words survives), and the
remaining bytes are read as UTF-8 with invalid bytes replaced.  Unknown
charsets fall back to UTF-8; a malformed encoded word is kept as written.
ENVELOPE and BODYSTRUCTURE never use this: Dovecot sends encoded words raw.
"""

from __future__ import annotations

import binascii
import re

from aiodbox.message.decode import decode_text

_ENCODED_WORD = re.compile(rb"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
_UNFOLD = re.compile(rb"\r?\n")
_Q_ESCAPE = re.compile(rb"=([0-9A-Fa-f]{2})")


def _decode_q(text: bytes) -> bytes:
    text = text.replace(b"_", b" ")
    return _Q_ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), text)


def _decode_b(text: bytes) -> bytes | None:
    text = re.sub(rb"[^A-Za-z0-9+/]", b"", text)
    text += b"=" * (-len(text) % 4)
    try:
        return binascii.a2b_base64(text)
    except binascii.Error:
        return None


def decode_header_value(value: bytes) -> str:
    """Decode a header value's encoded words; the result is plain text.

    Args:
        value: The raw or unfolded value (``HeaderField.value``).
    """
    value = _UNFOLD.sub(b"", value)
    out: list[str] = []
    pending_charset: bytes | None = None
    pending = bytearray()
    pos = 0

    def flush() -> None:
        nonlocal pending_charset
        if pending_charset is not None:
            out.append(decode_text(bytes(pending), pending_charset))
            pending.clear()
            pending_charset = None

    for m in _ENCODED_WORD.finditer(value):
        between = value[pos : m.start()]
        charset = m.group(1).split(b"*", 1)[0]
        raw = _decode_b(m.group(3)) if m.group(2) in b"bB" else _decode_q(m.group(3))
        if raw is None:
            continue  # keep the malformed word as plain text
        if between.strip(b" \t") or pending_charset is None:
            flush()
            out.append(decode_text(between, None))
        elif charset.lower() != pending_charset.lower():
            flush()
        pending_charset = pending_charset or charset
        pending += raw
        pos = m.end()
    flush()
    out.append(decode_text(value[pos:], None))
    return "".join(out)
