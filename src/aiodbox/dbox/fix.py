"""Repair scan: a whole dbox file's bytes in, intact records and damaged ranges out.

Theory of operation
-------------------
v3: every record ends with ``LF 01 03 sep LF``, metadata and ``01 04 sep LF``, where
``sep`` is random per file and never shown to clients, so no message body can contain it.
The scan finds each trailer with ``bytes.find``, parses the metadata after it (``K``
must match), and lets ``Z`` say where the body began: a record is intact when
``01 02 LF`` sits right before that body, the body matches ``H``, and the record does not
overlap the one before it. Each record is judged on its own bytes only, so an intact
record is never lost because a neighbour is damaged. Whatever lies between intact records
(or between the header and the first one, or after the last) is reported as one
:class:`DamagedRange`, with the reasons the candidate trailers inside it failed, so the
storage can move those bytes to lost+found.

If the file header is damaged or names a separator that no end marker uses, the
separator is taken from the end markers (the most common one), and the header bytes
become part of the first damaged range.

v2 (Dovecot 2.3) has no separator: records are walked in order; at a damaged record the
scan searches forward for the next ``01 02 'N'`` where a whole record parses, and reports
the bytes in between as damaged.

Sans-IO: the caller reads the file; nothing here does I/O.
"""

from __future__ import annotations

import collections
import hashlib
import re
from dataclasses import dataclass

from aiodbox.dbox.codec import (
    FileHeader,
    Record,
    _trailer_at,
    parse_file_header,
)
from aiodbox.dbox.format import (
    DIGEST_SIZE,
    RECORD_START,
    TRAILER_PREFIX,
    V2_MAGIC_POST,
    V2_MAGIC_PRE,
    V2_MSG_HEADER_SIZE,
    V2_TYPE_NORMAL,
    Corrupted,
    NeedBytes,
)
from aiodbox.dbox.v2 import V2FileHeader, V2Record, _read_v2_at, crlf_size, parse_v2_file_header

_END_MARKER = re.compile(rb"\x01\x04([0-9a-f]{32})\n")
_V2_START = V2_MAGIC_PRE + V2_TYPE_NORMAL
_MAX_REASONS = 3
_MAX_SEPARATOR_CANDIDATES = 8


@dataclass(slots=True, frozen=True)
class DamagedRange:
    """Bytes ``[start, end)`` of the file that belong to no intact record.

    Attributes:
        start: File offset of the first damaged byte.
        end: File offset just past the last damaged byte.
        reason: Why (the failures of record candidates in the range, or what is missing).
    """

    start: int
    end: int
    reason: str


@dataclass(slots=True, frozen=True)
class V3Scan:
    """The result of :func:`scan_v3`.

    Attributes:
        header: The file header, or None if it is damaged (then it lies in the first
            damaged range, and ``header_problem`` says why).
        header_problem: Why the header was not usable, or None.
        sep: The separator used for the scan (None if none could be found).
        records: Every intact record, in file order.
        damaged: Every damaged range, in file order. Header, records and damaged ranges
            tile the file exactly.
    """

    header: FileHeader | None
    header_problem: str | None
    sep: bytes | None
    records: tuple[Record, ...]
    damaged: tuple[DamagedRange, ...]


@dataclass(slots=True, frozen=True)
class V2Scan:
    """The result of :func:`scan_v2` (fields as in :class:`V3Scan`)."""

    header: V2FileHeader | None
    header_problem: str | None
    records: tuple[V2Record, ...]
    damaged: tuple[DamagedRange, ...]


def detect_format(data: bytes) -> str | None:
    """Return ``"v3"``, ``"v2"`` or None (not recognisably a dbox file).

    The header's version decides; a file with a damaged header is still recognised by
    v3 end markers or by a v2 message header plus metadata block.
    """
    if data.startswith(b"3 "):
        return "v3"
    if data.startswith(b"2 "):
        return "v2"
    if _END_MARKER.search(data):
        return "v3"
    if _V2_START in data and V2_MAGIC_POST in data:
        return "v2"
    return None


def scan_file(data: bytes) -> V3Scan | V2Scan | Corrupted:
    """Scan a whole v2 or v3 file.

    Returns:
        The scan for the detected format, or ``Corrupted`` if the bytes are not
        recognisably a dbox file (see :func:`detect_format`).
    """
    found = detect_format(data)
    if found == "v3":
        return scan_v3(data)
    if found == "v2":
        return scan_v2(data)
    return Corrupted("not a dbox file (no v2 or v3 header or records)")


# ------------------------------------------------------------------------------------ v3


def _choose_separator(
    data: bytes, header: FileHeader | Corrupted
) -> tuple[bytes | None, str | None]:
    """Return the separator to scan with and, if the header is not usable, why.

    The header's separator is used when some trailer or end marker in the file carries
    it (or when the file has no end markers at all). Otherwise the candidates are the
    separators of the end markers found; the one with the most trailers and end markers
    wins, so a separator from one damaged end marker cannot outvote the real one.
    """
    found = collections.Counter(m.group(1) for m in _END_MARKER.finditer(data))

    def score(sep: bytes) -> int:
        return data.count(TRAILER_PREFIX + sep + b"\n") + found[sep]

    if isinstance(header, FileHeader):
        if not found or score(header.sep) > 0:
            return header.sep, None
        problem = "file header separator matches no record"
    else:
        problem = "file header: " + header.reason
    if not found:
        return None, problem
    candidates = [sep for sep, _ in found.most_common(_MAX_SEPARATOR_CANDIDATES)]
    return max(candidates, key=score), problem


def _record_ending_at(data: bytes, t: int, sep: bytes, lowest: int) -> Record | Corrupted:
    """Judge the record whose trailer starts at ``data[t]``."""
    found = _trailer_at(data, t, sep, eof=True)
    if isinstance(found, NeedBytes):  # not returned with eof=True
        return Corrupted("truncated record")
    if isinstance(found, Corrupted):
        return Corrupted(f"record trailer at {t}: {found.reason}")
    metadata, end = found
    body_offset = t - metadata.size
    offset = body_offset - len(RECORD_START)
    if offset < lowest:
        return Corrupted(f"record trailer at {t}: Z points before the previous record")
    if data[offset:body_offset] != RECORD_START:
        return Corrupted(f"record trailer at {t}: no 01 02 LF where Z says the record starts")
    if metadata.digest is not None:
        body = memoryview(data)[body_offset:t]
        if hashlib.blake2b(body, digest_size=DIGEST_SIZE).hexdigest() != metadata.digest:
            return Corrupted(f"record at {offset}: body does not match its BLAKE2b digest H")
    return Record(
        offset=offset, body_offset=body_offset, body_size=metadata.size, end=end, metadata=metadata
    )


def _gap_reason(failures: list[str], at_end: bool) -> str:
    if failures:
        reasons = failures[:_MAX_REASONS]
        more = len(failures) - len(reasons)
        return "; ".join(reasons) + (f"; and {more} more" if more else "")
    if at_end:
        return "no complete record: truncated record or trailing garbage"
    return "bytes outside any record (no record trailer in this range)"


def scan_v3(data: bytes) -> V3Scan:
    """Find every intact v3 record in a whole file and every damaged byte range.

    Args:
        data: The whole file.

    Returns:
        The scan. Each record in it has a valid start, trailer, metadata (``K``) and, if
        it has ``H``, a body that matches it.
    """
    parsed = parse_file_header(data, eof=True)
    header = parsed if isinstance(parsed, FileHeader) else None
    header_or_problem = parsed if not isinstance(parsed, NeedBytes) else Corrupted("truncated")
    sep, problem = _choose_separator(data, header_or_problem)
    if problem is not None:
        header = None
    if sep is None:
        damaged = (DamagedRange(0, len(data), problem or "no separator"),) if data else ()
        return V3Scan(header=None, header_problem=problem, sep=None, records=(), damaged=damaged)

    records: list[Record] = []
    damaged_ranges: list[DamagedRange] = []
    failures: list[str] = [problem] if problem else []
    gap_start = header.length if header is not None else 0
    trailer = TRAILER_PREFIX + sep + b"\n"
    search = gap_start
    while (t := data.find(trailer, search)) >= 0:
        record = _record_ending_at(data, t, sep, gap_start)
        if isinstance(record, Corrupted):
            failures.append(record.reason)
            search = t + 1
            continue
        if record.offset > gap_start:
            damaged_ranges.append(
                DamagedRange(gap_start, record.offset, _gap_reason(failures, at_end=False))
            )
        records.append(record)
        failures = []
        gap_start = search = record.end
    if gap_start < len(data):
        damaged_ranges.append(DamagedRange(gap_start, len(data), _gap_reason(failures, True)))
    return V3Scan(
        header=header,
        header_problem=problem,
        sep=sep,
        records=tuple(records),
        damaged=tuple(damaged_ranges),
    )


# ------------------------------------------------------------------------------------ v2


def _v2_record_at(data: bytes, pos: int, msg_header_size: int) -> V2Record | Corrupted:
    found = _read_v2_at(data, pos, msg_header_size, eof=True)
    if isinstance(found, NeedBytes):  # not returned with eof=True
        return Corrupted("truncated record")
    if isinstance(found, Corrupted):
        return found
    body_offset, size, metadata, end = found
    virtual = metadata.virtual_size
    if virtual is not None and virtual != crlf_size(data[body_offset : body_offset + size]):
        return Corrupted("V (virtual size) does not match the message with CRLF line ends")
    return V2Record(offset=pos, body_offset=body_offset, body_size=size, end=end, metadata=metadata)


def _next_v2_record(data: bytes, start: int, msg_header_size: int) -> int:
    """Offset of the next place from ``start`` where a whole v2 record parses, or -1."""
    while (q := data.find(_V2_START, start)) >= 0:
        if isinstance(_v2_record_at(data, q, msg_header_size), V2Record):
            return q
        start = q + 1
    return -1


def scan_v2(data: bytes) -> V2Scan:
    """Walk a whole Dovecot 2.3 file: every intact record and every damaged range.

    Args:
        data: The whole file.

    Returns:
        The scan. ``V`` is checked against the message when present.
    """
    parsed = parse_v2_file_header(data, eof=True)
    header = parsed if isinstance(parsed, V2FileHeader) else None
    problem = None
    if isinstance(parsed, Corrupted):
        problem = "file header: " + parsed.reason
    elif isinstance(parsed, NeedBytes):  # not returned with eof=True
        problem = "file header: truncated"
    msg_header_size = header.msg_header_size if header is not None else V2_MSG_HEADER_SIZE
    records: list[V2Record] = []
    damaged: list[DamagedRange] = []
    pos = header.length if header is not None else 0
    if header is None:
        first = _next_v2_record(data, 0, msg_header_size)
        end = first if first >= 0 else len(data)
        if end > 0:
            damaged.append(DamagedRange(0, end, problem or "file header"))
        pos = end
    while pos < len(data):
        record = _v2_record_at(data, pos, msg_header_size)
        if isinstance(record, V2Record):
            records.append(record)
            pos = record.end
            continue
        following = _next_v2_record(data, pos + 1, msg_header_size)
        end = following if following >= 0 else len(data)
        damaged.append(DamagedRange(pos, end, f"record at {pos}: {record.reason}"))
        pos = end
    return V2Scan(
        header=header, header_problem=problem, records=tuple(records), damaged=tuple(damaged)
    )
