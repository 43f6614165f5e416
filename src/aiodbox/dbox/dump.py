"""Sans-IO ``dbox dump``: a whole file's bytes in, one entry per record out.

The entries carry the fields of DESIGN.md §10 (``offset``, ``size``, ``guid``,
``received``, ``sha256``, ``format``, ``status``, ``reason``) plus ``length``, the record
length with framing (for v2 this is the mdbox map's ``size``). A damaged byte range is
one entry with status ``"corrupted"``; its ``offset`` and ``length`` give the range and
the message fields are None. ``"expunged"`` is never reported: only an index knows it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from aiodbox.dbox.fix import DamagedRange, V2Scan, scan_file
from aiodbox.dbox.format import Corrupted
from aiodbox.dbox.v2 import LfToCrlf

_CHUNK = 1 << 20


@dataclass(slots=True, frozen=True)
class DumpEntry:
    """One record (or one damaged range) of a dumped file.

    Attributes:
        offset: Where the record starts: v3 its ``01 02 LF``, v2 its 30-byte message
            header (the mdbox map's offset). For a damaged range, its start.
        length: Record bytes including framing and metadata (damaged range: its length).
        format: ``"v2"`` or ``"v3"``.
        status: ``"ok"`` or ``"corrupted"``.
        size: Stored message bytes (the body size); None when corrupted.
        guid: Message GUID; None when corrupted or absent.
        received: Received time (UNIX seconds); None when corrupted or absent.
        sha256: SHA-256 hex of the message as IMAP ``BODY[]`` serves it (CRLF line ends);
            None when corrupted.
        reason: Why the entry is corrupted; None when ok.
    """

    offset: int
    length: int
    format: str
    status: str
    size: int | None = None
    guid: str | None = None
    received: int | None = None
    sha256: str | None = None
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Return the JSON object for ``dbox dump --json`` (``reason`` only if corrupted)."""
        out: dict[str, Any] = {
            "offset": self.offset,
            "size": self.size,
            "guid": self.guid,
            "received": self.received,
            "sha256": self.sha256,
            "format": self.format,
            "status": self.status,
            "length": self.length,
        }
        if self.reason is not None:
            out["reason"] = self.reason
        return out


def _crlf_sha256(body: memoryview) -> str:
    digest = hashlib.sha256()
    convert = LfToCrlf()
    for start in range(0, len(body), _CHUNK):
        digest.update(convert.feed(bytes(body[start : start + _CHUNK])))
    return digest.hexdigest()


def _damaged(rng: DamagedRange, fmt: str) -> DumpEntry:
    return DumpEntry(
        offset=rng.start,
        length=rng.end - rng.start,
        format=fmt,
        status="corrupted",
        reason=rng.reason,
    )


def dump_file(data: bytes) -> list[DumpEntry] | Corrupted:
    """Describe every record of a v2 or v3 dbox file, in file order.

    Args:
        data: The whole file.

    Returns:
        One entry per intact record and per damaged range, sorted by offset; or
        ``Corrupted`` if the bytes are not recognisably a dbox file.
    """
    scan = scan_file(data)
    if isinstance(scan, Corrupted):
        return scan
    view = memoryview(data)
    entries: list[DumpEntry] = []
    if isinstance(scan, V2Scan):
        for r2 in scan.records:
            body = view[r2.body_offset : r2.body_offset + r2.body_size]
            entries.append(
                DumpEntry(
                    offset=r2.offset,
                    length=r2.length,
                    format="v2",
                    status="ok",
                    size=r2.body_size,
                    guid=r2.metadata.guid,
                    received=r2.metadata.received,
                    sha256=_crlf_sha256(body),
                )
            )
        entries.extend(_damaged(rng, "v2") for rng in scan.damaged)
    else:
        for r3 in scan.records:
            body = view[r3.body_offset : r3.body_offset + r3.body_size]
            entries.append(
                DumpEntry(
                    offset=r3.offset,
                    length=r3.length,
                    format="v3",
                    status="ok",
                    size=r3.body_size,
                    guid=r3.metadata.guid,
                    received=r3.metadata.received,
                    sha256=hashlib.sha256(body).hexdigest(),
                )
            )
        entries.extend(_damaged(rng, "v3") for rng in scan.damaged)
    entries.sort(key=lambda e: e.offset)
    return entries
