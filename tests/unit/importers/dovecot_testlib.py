"""Helpers for the Dovecot importer tests (imported by the test modules).

The fixtures are the real Dovecot 2.3.19 mail roots in ``../shared/fixtures``
(read in place, never copied).  ``manifest.json`` holds the expected values and
``doveadm-dump/*.txt`` is Dovecot's own decoding of every index, which
:func:`parse_doveadm_dump` turns into data for cross-checking.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

USERS = ("sdbox", "mdbox")
MAILBOXES = ("INBOX", "Archive/2024")


def encode_offset(value: int) -> bytes:
    """Dovecot's ``mail_index_uint32_to_offset()`` (record size encoding)."""
    assert value % 4 == 0 and value < 0x40000000
    v = value >> 2
    return bytes(
        (
            0x80 | (v >> 21 & 0x7F),
            0x80 | (v >> 14 & 0x7F),
            0x80 | (v >> 7 & 0x7F),
            0x80 | (v & 0x7F),
        )
    )


class LogBuilder:
    """Builds a synthetic ``dovecot.index.log`` file, record by record."""

    def __init__(
        self,
        *,
        indexid: int = 0x11223344,
        file_seq: int = 1,
        prev_file_seq: int = 0,
        prev_file_offset: int = 0,
        initial_modseq: int = 1,
    ) -> None:
        self.data = bytearray(
            struct.pack(
                "<BBHIIIIIQB3xI",
                1,
                3,
                40,
                indexid,
                file_seq,
                prev_file_seq,
                prev_file_offset,
                0,
                initial_modseq,
                1,
                0,
            )
        )

    def add(self, rtype: int, payload: bytes) -> int:
        """Append a record; returns its offset.  Payload is padded to 4 bytes."""
        payload = payload + bytes(-len(payload) % 4)
        offset = len(self.data)
        self.data += encode_offset(8 + len(payload)) + struct.pack("<I", rtype) + payload
        return offset

    def bytes(self) -> bytes:
        return bytes(self.data)


EXTERNAL = 0x10000000


def append_payload(*records: tuple[int, int]) -> bytes:
    return b"".join(struct.pack("<IB3x", uid, flags) for uid, flags in records)


def header_update(offset: int, data: bytes) -> bytes:
    return struct.pack("<HH", offset, len(data)) + data


def ext_intro(
    name: str,
    *,
    ext_id: int = 0xFFFFFFFF,
    reset_id: int = 0,
    hdr_size: int = 0,
    record_size: int = 0,
    record_align: int = 0,
    flags: int = 0,
) -> bytes:
    raw = name.encode() if ext_id == 0xFFFFFFFF else b""
    return (
        struct.pack(
            "<IIIHHHH", ext_id, reset_id, hdr_size, record_size, record_align, flags, len(raw)
        )
        + raw
    )


def keyword_update(modify: int, name: str, *ranges: tuple[int, int]) -> bytes:
    raw = name.encode()
    head = struct.pack("<BxH", modify, len(raw)) + raw
    head += bytes(-len(head) % 4)
    return head + b"".join(struct.pack("<II", a, b) for a, b in ranges)


def flag_update(uid1: int, uid2: int, add: int = 0, remove: int = 0) -> bytes:
    return struct.pack("<IIBBBx", uid1, uid2, add, remove, 0)


@dataclass
class DumpRecord:
    uid: int
    flags: int
    ext: dict[str, str] = field(default_factory=dict)  # name -> hex


@dataclass
class Dump:
    header: dict[str, str]
    extensions: list[dict[str, Any]]
    keywords: list[str]
    records: list[DumpRecord]


_KV = re.compile(r"^([a-z0-9_ ]+?)[ .]*= (.*)$")
_RECORD = re.compile(r"^RECORD: seq=\d+, uid=(\d+), flags=0x([0-9a-f]+)")
_REC_EXT = re.compile(r"^ - ext \d+ (\S+)\s*:.*\(([0-9a-f]*)\)\s*$")
_KEYWORD = re.compile(r"^\s*(\d+) = (.*)$")


def parse_doveadm_dump(text: str) -> Dump:
    """Parse ``doveadm dump`` output of an index (header, extensions, keywords, records)."""
    header: dict[str, str] = {}
    extensions: list[dict[str, Any]] = []
    keywords: list[str] = []
    records: list[DumpRecord] = []
    section = "header"
    for line in text.splitlines():
        if line.startswith("-- Extension"):
            section = "ext"
            extensions.append({})
            continue
        if line.startswith("-- Keywords"):
            section = "keywords"
            continue
        if line.startswith("-- CACHE"):
            section = "cache"
            continue
        if line.startswith("-- RECORDS"):
            section = "records"
            continue
        if section == "header" and (m := _KV.match(line)):
            header[m.group(1).strip()] = m.group(2).split(" (")[0]
        elif section == "ext" and (m := _KV.match(line)):
            key, value = m.group(1).strip(), m.group(2)
            extensions[-1][key] = value if key == "name" else int(value)
        elif section == "keywords" and (m := _KEYWORD.match(line)):
            keywords.append(m.group(2))
        elif section == "records":
            if m := _RECORD.match(line):
                records.append(DumpRecord(int(m.group(1)), int(m.group(2), 16)))
            elif m := _REC_EXT.match(line):
                records[-1].ext[m.group(1)] = m.group(2)
    return Dump(header, extensions, keywords, records)


def mail_root(dovecot_dir: Path, user: str) -> Path:
    return dovecot_dir / user / user


def mailbox_dir(dovecot_dir: Path, user: str, mailbox: str) -> Path:
    return mail_root(dovecot_dir, user) / "mailboxes" / mailbox / "dbox-Mails"


def read_optional(path: Path) -> bytes | None:
    return path.read_bytes() if path.exists() else None
