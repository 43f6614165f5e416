"""Modified UTF-7 for mailbox names (RFC 3501 §5.1.3).

Printable US-ASCII other than ``&`` stands for itself; ``&`` is written ``&-``; every
other run of characters is UTF-16BE, base64 with ``,`` instead of ``/`` and no padding,
between ``&`` and ``-``.  :func:`decode` is strict (as Dovecot is): 8-bit or control
bytes, printable ASCII inside a shift, non-zero padding bits, odd UTF-16 lengths and
unpaired surrogates are all rejected.
"""

from __future__ import annotations

import base64
import binascii
import re

_NEEDS_SHIFT = re.compile(r"[^\x20-\x7e]+|&")
_SHIFT = re.compile(rb"&([A-Za-z0-9+,]*)-")
_INVALID_RAW = re.compile(rb"[^\x20-\x7e]")


def _encode_run(match: re.Match[str]) -> str:
    run = match.group(0)
    if run == "&":
        return "&-"
    raw = run.encode("utf-16-be")  # raises UnicodeEncodeError on a lone surrogate
    b64 = base64.b64encode(raw).rstrip(b"=").replace(b"/", b",")
    return "&" + b64.decode("ascii") + "-"


def encode(name: str) -> bytes:
    """Encode a Unicode mailbox name as modified UTF-7.

    Raises:
        ValueError: ``name`` holds an unpaired surrogate.
    """
    return _NEEDS_SHIFT.sub(_encode_run, name).encode("ascii")


def decode(data: bytes) -> str:
    """Decode a modified UTF-7 mailbox name.

    Raises:
        ValueError: ``data`` is not valid, canonical modified UTF-7.
    """
    if _INVALID_RAW.search(data):
        raise ValueError("8-bit or control character in mailbox name")
    if b"&" not in data:
        return data.decode("ascii")
    out: list[str] = []
    pos = 0
    while True:
        amp = data.find(b"&", pos)
        if amp < 0:
            out.append(data[pos:].decode("ascii"))
            return "".join(out)
        out.append(data[pos:amp].decode("ascii"))
        m = _SHIFT.match(data, amp)
        if m is None:
            raise ValueError("unterminated or invalid '&' shift in mailbox name")
        b64 = m.group(1)
        if not b64:
            out.append("&")
        else:
            out.append(_decode_run(b64))
        pos = m.end()


def _decode_run(b64: bytes) -> str:
    std = b64.replace(b",", b"/")
    if len(std) % 4 == 1:
        raise ValueError("truncated base64 in mailbox name")
    try:
        raw = base64.b64decode(std + b"=" * (-len(std) % 4), validate=True)
    except binascii.Error as exc:
        raise ValueError("invalid base64 in mailbox name") from exc
    if base64.b64encode(raw).rstrip(b"=") != std:
        raise ValueError("non-zero padding bits in mailbox name")
    if len(raw) % 2:
        raise ValueError("odd UTF-16 length in mailbox name")
    text = raw.decode("utf-16-be")  # strict: an unpaired surrogate raises
    if any(0x20 <= ord(c) <= 0x7E for c in text):
        raise ValueError("printable ASCII must not be base64-encoded in mailbox name")
    return text
