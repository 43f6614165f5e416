"""The dbox file formats: constants, shared result types and small parsing helpers.

dbox format v3 (what aiodbox writes), exactly as DESIGN.md §4 states it::

    file        = file-header record*
    file-header = "3" SP "S" sep SP "C" ctime-hex LF
    sep         = 32 lowercase hex chars, random per file (128 bits)
    record      = %x01 %x02 LF  body  LF %x01 %x03 sep LF  meta-line*  %x01 %x04 sep LF
    body        = the message bytes exactly as received (CRLF line ends, any content)
    meta-line   = key value LF           ; key = one ASCII letter

Metadata keys (Dovecot's letters where the meaning is the same): ``Z`` body size in hex
(**required**), ``G`` message GUID (32 hex, required), ``R`` received time (hex), ``H``
BLAKE2b digest of the body (hex; new: end-to-end integrity, checked by fsck), ``B``
original mailbox (mdbox), ``P`` POP3 UIDL, ``O`` POP3 order. Readers ignore unknown keys
and keep them on copy.

- sdbox read: one read of the last 512 bytes (grow if needed) finds the end marker (its
  ``sep``), then the ``%x01 %x03 sep`` trailer and ``Z``; the body is
  ``[header_len + 3, + Z)``.
- mdbox read: the map gives ``(file_id, offset, size)``; the body is
  ``[offset + 3, + size)``.
- Rotation: append to an mdbox file only if ``file_size + message_size + 512 <=
  rotate_size`` (the seed: assume ~512 bytes of metadata).
- Repair: scan for ``LF %x01 %x03 sep LF``; ``Z`` says where the body started; a record
  whose trailer is damaged is bounded by its neighbours and saved to a lost+found mailbox
  rather than dropped. The separator is random per file and never shown to clients, so a
  message cannot forge a record boundary.
- Storing CRLF bytes as received makes ``RFC822.SIZE`` the stored size and lets FETCH
  ``BODY[]`` go to the socket without conversion.

What this implementation fixes where DESIGN.md leaves a choice:

- All hex values are written in lowercase without leading zeros; readers accept only
  lowercase hex (1 to 16 digits) in ``Z``, ``R`` and the header's ``ctime``.
- ``H`` is BLAKE2b with ``digest_size=32`` (256 bits, 64 hex digits).
- ``O`` (POP3 order) is decimal, as Dovecot writes it.
- ``K`` (an addition, **required** in v3): BLAKE2b with ``digest_size=8`` (16 hex digits)
  of the meta-line bytes before it, and always the last meta-line. ``H`` protects the
  body and the framing protects ``Z``, but without ``K`` a flipped hex digit in ``G`` or
  ``R`` would go unnoticed and a damaged record would come back as intact.
- Known keys appear at most once; unknown keys (any other ASCII letter) may repeat and
  are kept in order.
- Metadata of one record is at most ``MAX_METADATA`` bytes.

dbox v2 (Dovecot 2.3, read only): file header ``2 M1e C<hex>`` LF; per record a 30-byte
message header (``01 02 'N'``, spaces, the message size as 16 hex digits at offset 13, LF
at offset 29), the message with LF line ends, then ``LF 01 03 LF``, ``<key><value>`` LF
lines and an empty line. See :mod:`aiodbox.dbox.v2`.

Results: the readers never raise for bad file bytes. They return the parsed value,
:class:`NeedBytes` (give me more bytes, the function says which) or :class:`Corrupted`
(with a human reason). I/O errors are not the codec's business: it never reads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

# v3 framing.
V3_VERSION: Final = b"3"
RECORD_START: Final = b"\x01\x02\n"
"""The 3 bytes before a v3 body; the body starts at ``record offset + 3``."""
TRAILER_PREFIX: Final = b"\n\x01\x03"
"""Followed by ``sep`` and LF: the trailer right after a v3 body."""
END_PREFIX: Final = b"\x01\x04"
"""Followed by ``sep`` and LF: the end marker of a v3 record."""
SEP_LEN: Final = 32
"""Length of the per-file separator: 32 lowercase hex characters."""
TRAILER_LEN: Final = len(TRAILER_PREFIX) + SEP_LEN + 1
END_LEN: Final = len(END_PREFIX) + SEP_LEN + 1
MIN_V3_HEADER_LEN: Final = len(b"3 S") + SEP_LEN + len(b" C0\n")
MAX_V3_HEADER_LEN: Final = len(b"3 S") + SEP_LEN + len(b" C") + 16 + 1

# v3 metadata keys.
KEY_SIZE: Final = "Z"
KEY_GUID: Final = "G"
KEY_RECEIVED: Final = "R"
KEY_DIGEST: Final = "H"
KEY_ORIG_MAILBOX: Final = "B"
KEY_POP3_UIDL: Final = "P"
KEY_POP3_ORDER: Final = "O"
KEY_META_CHECK: Final = "K"
KNOWN_KEYS: Final = frozenset("ZGRHBPOK")
DIGEST_SIZE: Final = 32
"""BLAKE2b digest size in bytes of ``H`` (64 hex digits)."""
META_CHECK_SIZE: Final = 8
"""BLAKE2b digest size in bytes of ``K`` (16 hex digits)."""
GUID_LEN: Final = 32

MAX_METADATA: Final = 64 * 1024
"""Upper bound for one record's metadata; longer is treated as corruption."""
SDBOX_TAIL_READ: Final = 512
"""The first tail read of an sdbox file (DESIGN §4); grown on :class:`NeedBytes`."""
MDBOX_METADATA_RESERVE: Final = 512
"""Metadata bytes assumed per message when deciding mdbox rotation."""

# v2 (Dovecot 2.3) framing.
V2_VERSION: Final = b"2"
V2_MSG_HEADER_SIZE: Final = 0x1E
V2_MAGIC_PRE: Final = b"\x01\x02"
V2_TYPE_NORMAL: Final = b"N"
V2_SIZE_OFFSET: Final = 13
V2_SIZE_DIGITS: Final = 16
V2_MAGIC_POST: Final = b"\n\x01\x03\n"

_HEX_NUMBER: Final = re.compile(rb"[0-9a-f]{1,16}")
_HEX_NUMBER_ANY_CASE: Final = re.compile(rb"[0-9a-fA-F]{1,16}")
_SEPARATOR: Final = re.compile(rb"[0-9a-f]{32}")
_GUID: Final = re.compile(r"[0-9a-f]{32}")
_DIGEST: Final = re.compile(r"[0-9a-f]{64}")


@dataclass(slots=True, frozen=True)
class Corrupted:
    """The bytes are not a valid dbox file or record.

    Attributes:
        reason: A one-line human explanation ("Z does not match ...").
    """

    reason: str


@dataclass(slots=True, frozen=True)
class NeedBytes:
    """The function needs more bytes than it was given; call it again with more.

    Attributes:
        size: How many bytes the next call needs; the calling function's docstring says
            counted from where (from a record start, or from the end of the file).
    """

    size: int


def parse_hex(value: bytes, *, lowercase_only: bool = True) -> int | None:
    """Parse a non-negative hex number strictly (no sign, prefix, space or underscore).

    Args:
        value: The digits: 1 to 16, so garbage cannot produce huge numbers.
        lowercase_only: Reject ``A``-``F`` (v3 writes lowercase; v2 may use either).

    Returns:
        The number, or None if ``value`` is not 1 to 16 valid hex digits.
    """
    pattern = _HEX_NUMBER if lowercase_only else _HEX_NUMBER_ANY_CASE
    if pattern.fullmatch(value) is None:
        return None
    return int(value, 16)


def is_separator(value: bytes) -> bool:
    """True if ``value`` is a valid v3 separator (32 lowercase hex characters)."""
    return _SEPARATOR.fullmatch(value) is not None


def is_guid(value: str) -> bool:
    """True if ``value`` is a 128-bit GUID as 32 lowercase hex characters."""
    return _GUID.fullmatch(value) is not None


def is_digest(value: str) -> bool:
    """True if ``value`` is an ``H`` value: 64 lowercase hex characters."""
    return _DIGEST.fullmatch(value) is not None


def is_key(byte: int) -> bool:
    """True if ``byte`` is a valid metadata key (one ASCII letter)."""
    return 0x41 <= byte <= 0x5A or 0x61 <= byte <= 0x7A
