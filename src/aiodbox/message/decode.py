"""Incremental transfer and charset decoding (never raises on bad input).

A :class:`PartTextDecoder` turns the raw body bytes of one MIME part, pushed in
chunks of any size, into text: first the Content-Transfer-Encoding is undone
(base64, quoted-printable; 7bit/8bit/binary/unknown pass through), then the
charset is decoded with invalid bytes replaced by U+FFFD.  Unknown or missing
charsets are read as UTF-8, like Dovecot (which also treats us-ascii as UTF-8),
so 8-bit text in a mislabelled part still searches as the sender meant it.
"""

from __future__ import annotations

import binascii
import codecs
import re

_B64_JUNK = re.compile(rb"[^A-Za-z0-9+/]")
# Codecs that exist in Python but are not charsets a message may name.
_NOT_CHARSETS = frozenset(
    {
        "undefined",
        "unicode_escape",
        "raw_unicode_escape",
        "idna",
        "punycode",
        "mbcs",
        "oem",
        "palmos",
    }
)
_ALIASES = {"unicode-1-1-utf-7": "utf-7", "x-unknown": "utf-8", "unknown-8bit": "utf-8"}


def lookup_charset(charset: str | bytes | None) -> str:
    """The Python codec name for a MIME charset; ``"utf-8"`` when unusable.

    us-ascii is mapped to UTF-8 (8-bit bytes in a part labelled us-ascii are
    almost always UTF-8), as Dovecot does.
    """
    if charset is None:
        return "utf-8"
    if isinstance(charset, bytes):
        charset = charset.decode("ascii", "replace")
    name = _ALIASES.get(charset.strip().lower(), charset.strip().lower())
    try:
        info = codecs.lookup(name)
    except (LookupError, ValueError):
        return "utf-8"
    if not getattr(info, "_is_text_encoding", True) or info.name in _NOT_CHARSETS:
        return "utf-8"
    if info.name == "ascii":
        return "utf-8"
    return info.name


def text_decoder(charset: str | bytes | None) -> codecs.IncrementalDecoder:
    """An incremental decoder for ``charset`` that replaces invalid bytes."""
    return codecs.getincrementaldecoder(lookup_charset(charset))(errors="replace")


def decode_text(data: bytes, charset: str | bytes | None) -> str:
    """Decode a complete byte string in ``charset`` (invalid bytes replaced)."""
    return text_decoder(charset).decode(data, final=True)


class TransferDecoder:
    """Identity decoder (7bit, 8bit, binary and unknown encodings)."""

    def feed(self, data: bytes) -> bytes:
        """Decode the next chunk; may hold back a few bytes."""
        return data

    def finish(self) -> bytes:
        """Decode what was held back."""
        return b""


class Base64Decoder(TransferDecoder):
    """Lenient streaming base64: junk bytes ignored, missing padding tolerated."""

    def __init__(self) -> None:
        self._rest = b""

    def feed(self, data: bytes) -> bytes:
        data = self._rest + _B64_JUNK.sub(b"", data)
        cut = len(data) - len(data) % 4
        self._rest = data[cut:]
        return binascii.a2b_base64(data[:cut]) if cut else b""

    def finish(self) -> bytes:
        rest, self._rest = self._rest, b""
        if len(rest) < 2:
            return b""
        try:
            return binascii.a2b_base64(rest + b"=" * (-len(rest) % 4))
        except binascii.Error:
            return b""


class QuotedPrintableDecoder(TransferDecoder):
    """Streaming quoted-printable (as the stdlib ``quopri``/``binascii`` reads it)."""

    def __init__(self) -> None:
        self._rest = b""

    def feed(self, data: bytes) -> bytes:
        data = self._rest + data
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            # No line end yet: decode all but a possibly split "=XX"/"=CRLF".
            eq = data.rfind(b"=", max(0, len(data) - 3))
            cut = eq if eq >= 0 else len(data)
        self._rest = data[cut:]
        return binascii.a2b_qp(data[:cut]) if cut else b""

    def finish(self) -> bytes:
        rest, self._rest = self._rest, b""
        return binascii.a2b_qp(rest) if rest else b""


def transfer_decoder(encoding: str | bytes | None) -> TransferDecoder:
    """The decoder for a Content-Transfer-Encoding value (identity if unknown)."""
    if isinstance(encoding, bytes):
        encoding = encoding.decode("ascii", "replace")
    name = (encoding or "").strip().lower()
    if name == "base64":
        return Base64Decoder()
    if name == "quoted-printable":
        return QuotedPrintableDecoder()
    return TransferDecoder()


class PartTextDecoder:
    """Body bytes of one part in, text out, chunk by chunk.

    Args:
        transfer_encoding: The part's Content-Transfer-Encoding (or None).
        charset: The part's charset parameter (or None).
    """

    def __init__(self, transfer_encoding: str | bytes | None, charset: str | bytes | None) -> None:
        self._transfer = transfer_decoder(transfer_encoding)
        self._text = text_decoder(charset)

    def feed(self, data: bytes) -> str:
        """Decode the next chunk of raw body bytes."""
        return self._text.decode(self._transfer.feed(data))

    def finish(self) -> str:
        """Flush everything held back (call once at the end of the part)."""
        return self._text.decode(self._transfer.finish(), final=True)
