"""Sans-IO reader for Dovecot 2.3 dbox files (format v2), read only.

Theory of operation
-------------------
A v2 file is a header line ``2 M1e C<hex>`` LF and then records. Each record is a
message header of ``M`` bytes (30 in every Dovecot 2.3 file: ``01 02 'N'``, spaces, the
message size as 16 hex digits at offset 13, LF as its last byte), the message bytes
(Dovecot 2.3 stores them with LF line ends unless ``mail_save_crlf = yes``), then the
metadata block: ``LF 01 03 LF``, ``<key><value>`` LF lines and an empty line (a line
starting with a space also ends it: old Dovecot padding). Keys read here: ``G`` GUID,
``R`` received time (hex), ``V`` virtual (CRLF) size (hex), ``Z`` physical size (hex),
``B`` original mailbox, ``P`` POP3 UIDL, ``O`` POP3 order (decimal); other keys are
ignored, and a key seen twice keeps its first value (as Dovecot does).

IMAP serves v2 messages with CRLF line ends: :class:`LfToCrlf` converts a body chunk by
chunk, and the IMAP size is ``V``.

Like :mod:`aiodbox.dbox.codec`, nothing here reads a file: functions take bytes and
return a result, :class:`~aiodbox.dbox.format.NeedBytes` or
:class:`~aiodbox.dbox.format.Corrupted`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from aiodbox.dbox.format import (
    MAX_METADATA,
    MDBOX_METADATA_RESERVE,
    V2_MAGIC_POST,
    V2_MAGIC_PRE,
    V2_MSG_HEADER_SIZE,
    V2_SIZE_DIGITS,
    V2_SIZE_OFFSET,
    V2_TYPE_NORMAL,
    V2_VERSION,
    Corrupted,
    NeedBytes,
    parse_hex,
)

MAX_V2_HEADER_LINE: Final = 256
"""A v2 file header line longer than this is treated as corruption."""
MAX_V2_MSG_HEADER_SIZE: Final = 4096


@dataclass(slots=True, frozen=True)
class V2FileHeader:
    """A parsed v2 file header.

    Attributes:
        msg_header_size: ``M``: the size of each record's message header (30).
        ctime: ``C``: creation time (UNIX seconds), if present.
        length: Header line length; the first record starts here.
    """

    msg_header_size: int
    ctime: int | None
    length: int


@dataclass(slots=True, frozen=True)
class V2Metadata:
    """Metadata of one v2 record; None where the key is absent.

    Attributes:
        guid: ``G``: the message GUID as written (32 hex in Dovecot 2.3).
        received: ``R``: received time, UNIX seconds (IMAP INTERNALDATE).
        virtual_size: ``V``: the size with CRLF line ends (what IMAP serves).
        physical_size: ``Z``: physical size, written only for compressed mail.
        orig_mailbox: ``B``: the mailbox the message was saved to first (mdbox).
        pop3_uidl: ``P``: POP3 UIDL.
        pop3_order: ``O``: POP3 order.
    """

    guid: str | None = None
    received: int | None = None
    virtual_size: int | None = None
    physical_size: int | None = None
    orig_mailbox: str | None = None
    pop3_uidl: str | None = None
    pop3_order: int | None = None


@dataclass(slots=True, frozen=True)
class V2Record:
    """A located v2 record. All offsets are file offsets.

    Attributes:
        offset: Where the record's message header starts (the mdbox map's offset).
        body_offset: Where the message bytes start (``offset + M``).
        body_size: Stored message bytes (the size in the message header).
        end: Just past the metadata's empty line (the next record starts here).
        metadata: The parsed metadata.
    """

    offset: int
    body_offset: int
    body_size: int
    end: int
    metadata: V2Metadata

    @property
    def length(self) -> int:
        """Record length: message header + message + metadata (the mdbox map's size)."""
        return self.end - self.offset


def _text(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")


def parse_v2_file_header(data: bytes, *, eof: bool = False) -> V2FileHeader | NeedBytes | Corrupted:
    """Parse the v2 file header at the start of ``data`` (the first bytes of a file).

    Args:
        data: Bytes from file offset 0.
        eof: ``data`` is the whole file.

    Returns:
        The header; ``NeedBytes(n)`` to call again with the first ``n`` bytes; or
        ``Corrupted``.
    """
    head = data[:2]
    if head != b"2 "[: len(head)]:
        return Corrupted("not a dbox v2 file header")
    lf = data.find(b"\n", 0, MAX_V2_HEADER_LINE)
    if lf < 0:
        if len(data) < MAX_V2_HEADER_LINE and not eof:
            return NeedBytes(MAX_V2_HEADER_LINE)
        return Corrupted("file header has no LF")
    fields = data[:lf].split(b" ")
    if fields[0] != V2_VERSION:
        return Corrupted("file header version is not 2")
    msg_header_size: int | None = None
    ctime: int | None = None
    for field in fields[1:]:
        key, value = field[:1], field[1:]
        if key == b"M":
            msg_header_size = parse_hex(value, lowercase_only=False)
            if msg_header_size is None:
                return Corrupted("file header M is not hex")
        elif key == b"C":
            ctime = parse_hex(value, lowercase_only=False)
            if ctime is None:
                return Corrupted("file header C is not hex")
    if msg_header_size is None:
        return Corrupted("file header has no message header size M")
    if not V2_MSG_HEADER_SIZE <= msg_header_size <= MAX_V2_MSG_HEADER_SIZE:
        return Corrupted(f"file header M={msg_header_size:x} is not a usable message header size")
    return V2FileHeader(msg_header_size=msg_header_size, ctime=ctime, length=lf + 1)


def _parse_v2_metadata(lines: list[bytes]) -> V2Metadata | Corrupted:
    first: dict[bytes, bytes] = {}
    for line in lines:
        first.setdefault(line[:1], line[1:])
    hex_values: dict[bytes, int | None] = {}
    for key in (b"R", b"V", b"Z"):
        if key in first:
            number = parse_hex(first[key], lowercase_only=False)
            if number is None:
                return Corrupted(f"metadata {key.decode()} is not hex")
            hex_values[key] = number
    pop3_order = None
    if b"O" in first:
        raw = first[b"O"]
        if not raw.isdigit() or len(raw) > 19:
            return Corrupted("metadata O is not a decimal number")
        pop3_order = int(raw)
    guid = first.get(b"G")
    orig = first.get(b"B")
    uidl = first.get(b"P")
    return V2Metadata(
        guid=None if guid is None else _text(guid),
        received=hex_values.get(b"R"),
        virtual_size=hex_values.get(b"V"),
        physical_size=hex_values.get(b"Z"),
        orig_mailbox=None if orig is None else _text(orig),
        pop3_uidl=None if uidl is None else _text(uidl),
        pop3_order=pop3_order,
    )


def _read_v2_at(
    data: bytes, pos: int, header_size: int, *, eof: bool
) -> tuple[int, int, V2Metadata, int] | NeedBytes | Corrupted:
    """Parse the record at ``data[pos]``; NeedBytes counts from ``pos``.

    Returns ``(body_start, body_size, metadata, end)`` as indexes into ``data``.
    """
    have = len(data) - pos
    magic = data[pos : pos + 3]
    if magic != (V2_MAGIC_PRE + V2_TYPE_NORMAL)[: len(magic)]:
        return Corrupted("message header has a bad magic value")
    if have < header_size:
        if eof:
            return Corrupted("truncated: the file ends inside a message header")
        return NeedBytes(header_size + MDBOX_METADATA_RESERVE)
    if data[pos + header_size - 1] != 0x0A:
        return Corrupted("message header does not end with LF")
    size_at = pos + V2_SIZE_OFFSET
    size = parse_hex(data[size_at : size_at + V2_SIZE_DIGITS], lowercase_only=False)
    if size is None:
        return Corrupted("message header size is not 16 hex digits")
    body_start = pos + header_size
    meta_start = body_start + size
    need = header_size + size + len(V2_MAGIC_POST) + MDBOX_METADATA_RESERVE
    if len(data) < meta_start + len(V2_MAGIC_POST):
        if eof:
            return Corrupted("truncated: the file ends inside the message")
        return NeedBytes(need)
    if data[meta_start : meta_start + len(V2_MAGIC_POST)] != V2_MAGIC_POST:
        return Corrupted("no metadata block (LF 01 03 LF) after the message")
    lines: list[bytes] = []
    line_start = meta_start + len(V2_MAGIC_POST)
    limit = line_start + MAX_METADATA
    while True:
        lf = data.find(b"\n", line_start, limit)
        if lf < 0:
            if eof or len(data) >= limit:
                return Corrupted("metadata has no end-of-metadata line")
            return NeedBytes(min(limit - pos, max(need, 2 * have)))
        line = data[line_start:lf]
        line_start = lf + 1
        if not line or line[:1] == b" ":
            metadata = _parse_v2_metadata(lines)
            if isinstance(metadata, Corrupted):
                return metadata
            return body_start, size, metadata, line_start
        lines.append(line)


def read_v2_record(
    data: bytes,
    *,
    offset: int = 0,
    msg_header_size: int = V2_MSG_HEADER_SIZE,
    eof: bool = False,
) -> V2Record | NeedBytes | Corrupted:
    """Read the v2 record starting at ``data[0]``.

    Args:
        data: Bytes starting at the record's message header (file offset ``offset``).
            With an mdbox map, reading the map's ``size`` bytes is exactly enough.
        offset: File offset of ``data[0]``.
        msg_header_size: ``M`` from the file header.
        eof: ``data`` reaches the end of the file.

    Returns:
        The record; ``NeedBytes(n)`` for the first ``n`` bytes from ``offset``; or
        ``Corrupted``.
    """
    found = _read_v2_at(data, 0, msg_header_size, eof=eof)
    if not isinstance(found, tuple):
        return found
    body_start, size, metadata, end = found
    return V2Record(
        offset=offset,
        body_offset=offset + body_start,
        body_size=size,
        end=offset + end,
        metadata=metadata,
    )


# --------------------------------------------------------------------- LF -> CRLF output


def _to_crlf(data: bytes) -> bytes:
    # Normalise existing CRLF to LF first so that it is not doubled, then expand.
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


class LfToCrlf:
    """Incremental LF to CRLF conversion: chunks in, chunks out.

    Every LF not preceded by CR becomes CRLF; existing CRLF pairs are left alone, also
    when the CR ends one chunk and the LF starts the next. Holds no data back, so there
    is nothing to flush at the end.
    """

    __slots__ = ("_last_cr", "_size")

    def __init__(self) -> None:
        self._last_cr = False
        self._size = 0

    @property
    def size(self) -> int:
        """Output bytes produced so far."""
        return self._size

    def feed(self, chunk: bytes) -> bytes:
        """Return ``chunk`` converted; its bytes are final (no lookahead is kept)."""
        if not chunk:
            return b""
        # A CR that ended the previous chunk makes a leading LF part of an existing CRLF.
        completes_crlf = self._last_cr and chunk[0] == 0x0A
        out = b"\n" + _to_crlf(chunk[1:]) if completes_crlf else _to_crlf(chunk)
        self._last_cr = chunk[-1] == 0x0D
        self._size += len(out)
        return out


def lf_to_crlf(data: bytes) -> bytes:
    """Return ``data`` with every bare LF turned into CRLF (existing CRLF kept)."""
    return _to_crlf(data)


def crlf_size(data: bytes) -> int:
    """Return ``len(lf_to_crlf(data))`` without building it."""
    return len(data) + data.count(b"\n") - data.count(b"\r\n")
