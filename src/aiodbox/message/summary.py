"""What a parsed message leaves for the index: rendered bytes plus a part table.

The storage caches :meth:`MessageSummary.to_bytes` in its index, so a later
FETCH of BODYSTRUCTURE, BODY or ENVELOPE, and locating ``BODY[1.2]``, needs no
message I/O at all.  The format is versioned and self-checking; corrupt bytes
raise :class:`ValueError`, never return wrong data.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from aiodbox.message.envelope import envelope_bytes
from aiodbox.message.parser import MessagePart, PartFlags, Size
from aiodbox.message.structure import render_body, render_bodystructure

_MAGIC = b"AMS1"
_HEAD = struct.Struct("<4sIIII")
_ENTRY = struct.Struct("<iIQQQIQQI")


@dataclass(frozen=True, slots=True)
class PartEntry:
    """One MIME part of the table (depth-first order, the message first).

    Attributes:
        parent: Index of the parent entry, -1 for the message.
        flags: The part's :class:`~aiodbox.message.parser.PartFlags`.
        offset: Physical offset of the part's header.
        header_size: Size of the part's header.
        body_size: Size of the part's body.
    """

    parent: int
    flags: PartFlags
    offset: int
    header_size: Size
    body_size: Size

    @property
    def body_offset(self) -> int:
        """Physical offset of the first body byte."""
        return self.offset + self.header_size.physical


@dataclass(frozen=True, slots=True)
class MessageSummary:
    """Rendered BODYSTRUCTURE/BODY/ENVELOPE and the part table of one message."""

    bodystructure: bytes
    body: bytes
    envelope: bytes
    parts: tuple[PartEntry, ...]

    def to_bytes(self) -> bytes:
        """Serialise for caching (compact, versioned)."""
        out = bytearray(
            _HEAD.pack(
                _MAGIC,
                len(self.bodystructure),
                len(self.body),
                len(self.envelope),
                len(self.parts),
            )
        )
        out += self.bodystructure + self.body + self.envelope
        for p in self.parts:
            out += _ENTRY.pack(
                p.parent,
                p.flags.value,
                p.offset,
                p.header_size.physical,
                p.header_size.virtual,
                p.header_size.lines,
                p.body_size.physical,
                p.body_size.virtual,
                p.body_size.lines,
            )
        return bytes(out)

    @classmethod
    def from_bytes(cls, data: bytes) -> MessageSummary:
        """Load what :meth:`to_bytes` wrote.

        Raises:
            ValueError: If the bytes are not a summary of this version.
        """
        if len(data) < _HEAD.size:
            raise ValueError("message summary too short")
        magic, n_bs, n_body, n_env, n_parts = _HEAD.unpack_from(data)
        if magic != _MAGIC:
            raise ValueError("not a message summary")
        pos = _HEAD.size
        if len(data) != pos + n_bs + n_body + n_env + n_parts * _ENTRY.size:
            raise ValueError("message summary has the wrong length")
        bs = data[pos : pos + n_bs]
        pos += n_bs
        body = data[pos : pos + n_body]
        pos += n_body
        env = data[pos : pos + n_env]
        pos += n_env
        parts = []
        for _ in range(n_parts):
            parent, flags, offset, hp, hv, hl, bp, bv, bl = _ENTRY.unpack_from(data, pos)
            pos += _ENTRY.size
            parts.append(
                PartEntry(parent, PartFlags(flags), offset, Size(hp, hv, hl), Size(bp, bv, bl))
            )
        return cls(bytes(bs), bytes(body), bytes(env), tuple(parts))

    def children(self, index: int) -> list[int]:
        """Indexes of the direct children of entry ``index``."""
        return [i for i, p in enumerate(self.parts) if p.parent == index]

    def section(self, path: Sequence[int]) -> PartEntry | None:
        """The part an IMAP section number (``[1, 2]`` for "1.2") names."""
        index = find_section_index(self, path)
        return None if index is None else self.parts[index]


def find_section_index(summary: MessageSummary, path: Sequence[int]) -> int | None:
    """Index of the entry an IMAP section path names (None if there is none)."""
    index = 0
    for num in path:
        if num < 1:
            return None
        part = summary.parts[index]
        if part.flags & PartFlags.MESSAGE_RFC822:
            kids = summary.children(index)
            if not kids:
                return None
            index = kids[0]
            part = summary.parts[index]
        if part.flags & PartFlags.MULTIPART:
            kids = summary.children(index)
            if num > len(kids):
                return None
            index = kids[num - 1]
        elif num != 1:
            return None
    return index


def find_section(root: MessagePart, path: Sequence[int]) -> MessagePart | None:
    """The part of a parsed tree that an IMAP section path names."""
    part = root
    for num in path:
        if num < 1:
            return None
        if part.flags & PartFlags.MESSAGE_RFC822:
            if not part.children:
                return None
            part = part.children[0]
        if part.flags & PartFlags.MULTIPART:
            if num > len(part.children):
                return None
            part = part.children[num - 1]
        elif num != 1:
            return None
    return part


def summarize(root: MessagePart) -> MessageSummary:
    """Render everything FETCH needs from a parsed message."""
    entries: list[PartEntry] = []

    def add(part: MessagePart, parent: int) -> None:
        index = len(entries)
        entries.append(PartEntry(parent, part.flags, part.offset, part.header_size, part.body_size))
        for child in part.children:
            add(child, index)

    add(root, -1)
    return MessageSummary(
        bodystructure=render_bodystructure(root),
        body=render_body(root),
        envelope=envelope_bytes(root.headers),
        parts=tuple(entries),
    )
