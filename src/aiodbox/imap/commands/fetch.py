"""``FETCH`` / ``UID FETCH``: flags and sizes from the shared view, everything else through
``Mailbox.fetch_many`` (bounded parallel prefetch, results in order).

Theory of operation
-------------------
The requested items decide what each message needs (:class:`_Plan`):

* ``FLAGS``, ``UID``, ``RFC822.SIZE``, ``MODSEQ`` come from the shared view: a FETCH of
  only those does no I/O at all (not even an index read).
* ``INTERNALDATE`` needs the index record (its time zone); ``ENVELOPE``, ``BODY``,
  ``BODYSTRUCTURE`` the parsed structure (cached in the index after the first parse);
  ``BODY[HEADER...]`` of the message the header bytes only.
* Sections inside the message (``BODY[TEXT]``, ``BODY[1.2]``, ``BODY[2.MIME]``, partials)
  become byte ranges of the message, computed from the structure's part table and
  prefetched by ``fetch_many`` (``ranges_for``); ``BODY[]`` is the prefetched whole
  stream.

Bodies are written as literals: up to :data:`INLINE_MAX` bytes are read and batched
with the other responses; larger ones are streamed with back-pressure, or sent with
``sendfile`` (see :mod:`aiodbox.imap.output`).  A message the client knows but another
session expunged meanwhile is left out and the command ends ``NO [EXPUNGEISSUED]``, as
Dovecot does.

``BINARY[part]`` (RFC 3516) decodes the part's Content-Transfer-Encoding in memory (up
to :data:`BINARY_MAX` bytes); ``BINARY[]`` is the message as stored (Dovecot rewrites
every part to binary there; kept simpler on purpose).

The implicit ``\\Seen`` of a non-PEEK body fetch is stored (one transaction) before the
responses are written, and those responses carry the new ``FLAGS``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, cast

from aiodbox.imap.commands.base import CommandError, Reply, bad, no, ok
from aiodbox.imap.output import SENDFILE_MIN, Output
from aiodbox.imap.protocol import Fetch, FetchAttribute, Section
from aiodbox.imap.protocol import responses as r
from aiodbox.imap.selected import (
    SelectedMailbox,
    flag_list_bytes,
    missing_uids,
    vanished_earlier,
)
from aiodbox.message.decode import transfer_decoder
from aiodbox.message.headers import find_values, parse_header_block, select_fields
from aiodbox.message.parser import PartFlags
from aiodbox.message.summary import MessageSummary, find_section_index
from aiodbox.storage.fetch import ByteRange, FetchedMessage, FetchParts

if TYPE_CHECKING:
    from aiodbox.imap.connection import ImapConnection

INLINE_MAX = 64 << 10
"""Literals up to this size are read whole and batched with other responses."""
BINARY_MAX = 32 << 20
"""Largest part ``BINARY[...]`` decodes (in memory)."""
_SEEN = 1
_VIEW_ITEMS = frozenset({"FLAGS", "UID", "RFC822.SIZE", "MODSEQ"})
_STRUCTURE_ITEMS = frozenset({"ENVELOPE", "BODYSTRUCTURE"})
_WHOLE = Section()
_HEADER = Section(text="HEADER")
_TEXT = Section(text="TEXT")


# ---------------------------------------------------------------------- planning


def _section_of(attr: FetchAttribute) -> Section | None:
    """The BODY section an item stands for (RFC822.* are BODY sections in disguise)."""
    if attr.name == "RFC822":
        return _WHOLE
    if attr.name == "RFC822.HEADER":
        return _HEADER
    if attr.name == "RFC822.TEXT":
        return _TEXT
    if attr.name in ("BODY", "BINARY", "BINARY.SIZE"):
        return attr.section
    return None


def _sets_seen(attr: FetchAttribute) -> bool:
    if attr.name in ("RFC822", "RFC822.TEXT"):
        return True
    return attr.name in ("BODY", "BINARY") and attr.section is not None and not attr.peek


@dataclass
class _Plan:
    """What every message of this FETCH needs read."""

    attrs: tuple[FetchAttribute, ...]
    record: bool = False
    structure: bool = False
    header: bool = False
    whole: bool = False
    parts: bool = False  # sections located through the part table
    partials: list[ByteRange] = field(default_factory=list)

    @classmethod
    def of(cls, attrs: Sequence[FetchAttribute]) -> _Plan:
        plan = cls(tuple(attrs))
        for attr in attrs:
            if attr.name in _VIEW_ITEMS:
                continue
            if attr.name == "INTERNALDATE":
                plan.record = True
            elif attr.name in _STRUCTURE_ITEMS or (attr.name == "BODY" and attr.section is None):
                plan.structure = True
            else:
                section = _section_of(attr)
                assert section is not None
                plan._add_section(attr, section)
        return plan

    def _add_section(self, attr: FetchAttribute, section: Section) -> None:
        binary = attr.name in ("BINARY", "BINARY.SIZE")
        if section.part:
            self.parts = True
        elif section.text in ("HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT"):
            self.header = True
        elif section.text == "TEXT":
            self.parts = True
        elif attr.partial is not None and not binary:
            origin, length = attr.partial
            self.partials.append((origin, origin + length))
        else:
            self.whole = True

    @property
    def view_only(self) -> bool:
        return not (self.record or self.structure or self.header or self.whole or self.parts)

    def fetch_parts(self) -> FetchParts:
        ranges_for: Callable[[MessageSummary], Sequence[ByteRange]] | None = None
        if self.parts:
            attrs = self.attrs

            def ranges_for(summary: MessageSummary) -> list[ByteRange]:
                out: list[ByteRange] = []
                for attr in attrs:
                    section = _section_of(attr)
                    if section is None or not (section.part or section.text == "TEXT"):
                        continue
                    span = _span(summary, section)
                    if span is not None and span[1] - span[0] > 0:
                        out.append(_with_partial(span, attr))
                return out

        return FetchParts(
            structure=self.structure,
            header=self.header,
            body=self.whole,
            ranges=tuple(self.partials),
            ranges_for=ranges_for,
        )


def _span(summary: MessageSummary, section: Section) -> tuple[int, int] | None:
    """The ``[start, end)`` IMAP bytes of a section; None if the message has no such part.

    HEADER.FIELDS sections give the span of the header they select from.
    """
    parts = summary.parts
    if not section.part:
        root = parts[0]
        if section.text == "TEXT":
            return root.body_offset, root.body_offset + root.body_size.physical
        return 0, root.header_size.physical
    index = find_section_index(summary, section.part)
    if index is None:
        return None
    entry = parts[index]
    text = section.text
    if text is None:
        return entry.body_offset, entry.body_offset + entry.body_size.physical
    if text == "MIME":
        return entry.offset, entry.offset + entry.header_size.physical
    if not entry.flags & PartFlags.MESSAGE_RFC822:
        return None
    kids = summary.children(index)
    if not kids:
        return None
    child = parts[kids[0]]
    if text == "TEXT":
        return child.body_offset, child.body_offset + child.body_size.physical
    return child.offset, child.offset + child.header_size.physical


def _with_partial(span: tuple[int, int], attr: FetchAttribute) -> tuple[int, int]:
    if attr.partial is None or attr.name != "BODY":
        return span
    start, end = span
    origin, length = attr.partial
    first = min(start + origin, end)
    return first, min(first + length, end)


# ---------------------------------------------------------------------- values


class _Stream:
    """A body item to stream: ``size`` bytes of range ``[start, end)``."""

    __slots__ = ("end", "start")

    def __init__(self, start: int, end: int | None) -> None:
        self.start = start
        self.end = end


def _display(attr: FetchAttribute) -> FetchAttribute:
    """The item as the response names it (HEADER.FIELDS names upper-cased, as Dovecot)."""
    section = attr.section
    if section is not None and section.fields:
        return replace(
            attr, section=replace(section, fields=tuple(f.upper() for f in section.fields))
        )
    return attr


def _partial_bytes(data: bytes, attr: FetchAttribute) -> bytes:
    if attr.partial is None:
        return data
    origin, length = attr.partial
    return data[origin : origin + length]


def _literal(name: bytes, data: bytes, *, binary: bool = False) -> bytes:
    tilde = b"~" if binary and b"\x00" in data else b""
    return name + b" " + tilde + b"{%d}\r\n" % len(data) + data


async def _read_range(fetched: FetchedMessage, start: int, end: int | None, limit: int) -> bytes:
    if end is not None and end <= start:
        return b""
    stream = fetched.open_body(start, end)
    try:
        return await stream.read_all(limit)
    except ValueError:
        raise CommandError(no("Section too large.", r.LIMIT)) from None


async def _header_of(fetched: FetchedMessage, span: tuple[int, int] | None) -> bytes:
    if span is None:
        return b""
    if span[0] == 0 and fetched.header is not None:
        return fetched.header
    return await _read_range(fetched, span[0], span[1], INLINE_MAX * 16)


def _select_fields(header: bytes, section: Section) -> bytes:
    fields, has_eoh = parse_header_block(header)
    return select_fields(
        fields, section.fields, exclude=section.text == "HEADER.FIELDS.NOT", has_eoh=has_eoh
    )


def _root_span(fetched: FetchedMessage, section: Section, size: int) -> tuple[int, int]:
    """HEADER/TEXT spans of the message itself (from the header when no structure)."""
    if fetched.summary is not None:
        span = _span(fetched.summary, section)
        assert span is not None
        return span
    header_len = len(fetched.header or b"")
    if section.text == "TEXT":
        return header_len, size
    return 0, header_len


async def _binary(fetched: FetchedMessage, section: Section, size: int) -> bytes:
    """Decoded content of a part (BINARY), or the whole message for ``BINARY[]``."""
    if not section.part:
        return await _read_range(fetched, 0, None, BINARY_MAX)
    summary = fetched.summary
    assert summary is not None
    index = find_section_index(summary, section.part)
    if index is None:
        return b""
    entry = summary.parts[index]
    if entry.flags & (PartFlags.MULTIPART | PartFlags.MESSAGE_RFC822):
        start = entry.body_offset
        return await _read_range(fetched, start, start + entry.body_size.physical, BINARY_MAX)
    mime = await _read_range(fetched, entry.offset, entry.body_offset, INLINE_MAX * 16)
    fields, _ = parse_header_block(mime)
    encodings = find_values(fields, b"content-transfer-encoding")
    encoding = encodings[0].strip().lower() if encodings else b"7bit"
    if encoding not in (b"7bit", b"8bit", b"binary", b"base64", b"quoted-printable"):
        raise CommandError(no("Unknown Content-Transfer-Encoding.", r.UNKNOWN_CTE))
    body = await _read_range(
        fetched, entry.body_offset, entry.body_offset + entry.body_size.physical, BINARY_MAX
    )
    decoder = transfer_decoder(encoding)
    return decoder.feed(body) + decoder.finish()


# ---------------------------------------------------------------------- the command


async def fetch(conn: ImapConnection, cmd: Fetch) -> Reply:
    """``[UID] FETCH set items [(CHANGEDSINCE n [VANISHED])]``."""
    sel = conn.selected
    assert sel is not None
    out = conn.output
    indices = sel.indices(cmd.sequence_set, uid=cmd.uid)
    attrs = list(dict.fromkeys(cmd.attributes))
    if cmd.vanished and not sel.qresync:
        return bad("Error in IMAP command UID FETCH: QRESYNC isn't enabled")
    if (
        cmd.changed_since is not None or any(a.name == "MODSEQ" for a in attrs)
    ) and not sel.condstore:
        conn.enabled = conn.enabled | {"CONDSTORE"}
        sel.condstore = True
        out.write(
            r.untagged_status("OK", "Highest", r.ResponseCode.highestmodseq(sel.view.highestmodseq))
        )
    if cmd.vanished and cmd.changed_since is not None:
        top = max(sel.view.uidnext - 1, 0)
        wanted = [(lo, min(hi, top)) for lo, hi in cmd.sequence_set.resolve(top) if lo <= top]
        gone = missing_uids(wanted, sel.uids, sel.count)
        if gone:
            out.write(vanished_earlier(gone))
    view = sel.view
    if cmd.changed_since is not None:
        since = cmd.changed_since
        kept = []
        for i in indices:
            vi = view.index_of(sel.uids[i])
            if vi is not None and view.modseqs[vi] > since:
                kept.append(i)
        indices = kept
    if not indices:
        return ok("Fetch completed.")
    prefix: list[FetchAttribute] = []
    if cmd.uid and not any(a.name == "UID" for a in attrs):
        prefix.append(FetchAttribute("UID"))
    if cmd.changed_since is not None and not any(a.name == "MODSEQ" for a in attrs):
        attrs.append(FetchAttribute("MODSEQ"))
    seen_now: set[int] = set()
    if not sel.readonly and any(_sets_seen(a) for a in attrs):
        seen_now = await _mark_seen(sel, indices)
    plan = _Plan.of(attrs)
    writer = _Writer(sel, out, prefix, attrs, seen_now)
    missing = 0
    if plan.view_only:
        for i in indices:
            if not writer.view_item_response(i):
                missing += 1
            if out.paused:
                await out.drain()
    else:
        uids = [sel.uids[i] for i in indices]
        seq_of = dict(zip(uids, indices, strict=True))
        delivered = 0
        async with contextlib.aclosing(
            sel.mailbox.fetch_many(uids, plan.fetch_parts())
        ) as messages:
            async for fetched in messages:
                try:
                    delivered += 1
                    seq = seq_of[fetched.uid]
                    if not writer.message_now(seq, fetched):
                        await writer.message(seq, fetched)
                    elif out.paused:
                        await out.drain()
                finally:
                    if not fetched.close_now():
                        await fetched.aclose()
        missing = len(uids) - delivered
    out.flush()
    if missing:
        return no("Some of the requested messages no longer exist.", r.EXPUNGEISSUED)
    return ok("Fetch completed.")


async def _mark_seen(sel: SelectedMailbox, indices: Sequence[int]) -> set[int]:
    view = sel.view
    unseen = []
    for i in indices:
        uid = sel.uids[i]
        vi = view.index_of(uid)
        if vi is not None and not view.flags[vi] & _SEEN:
            unseen.append(uid)
    if not unseen:
        return set()
    result = await sel.mailbox.store(unseen, "add", _SEEN)
    sel.note_own_change(result.modseq)
    return set(unseen)


_VIEW = 0  # FLAGS, UID, RFC822.SIZE, MODSEQ: from the view
_WHOLE_BODY = 1  # BODY[] / BODY.PEEK[] / RFC822: the whole message, no partial
_OTHER = 2


def _kind(attr: FetchAttribute) -> int:
    if attr.name in _VIEW_ITEMS:
        return _VIEW
    if attr.partial is None and (
        attr.name == "RFC822" or (attr.name == "BODY" and attr.section == _WHOLE)
    ):
        return _WHOLE_BODY
    return _OTHER


class _Writer:
    """Renders one FETCH response per message.

    What each item needs is worked out once per command (``_items``: kind, item, the
    item's response name), not once per message; a response whose items are all small
    is written with one :meth:`Output.buffer` call.
    """

    def __init__(
        self,
        sel: SelectedMailbox,
        out: Output,
        prefix: list[FetchAttribute],
        attrs: list[FetchAttribute],
        seen_now: set[int],
    ) -> None:
        self.sel = sel
        self.out = out
        self.prefix = prefix
        self.attrs = attrs
        self.seen_now = seen_now
        self.has_flags = any(a.name == "FLAGS" for a in attrs)
        plan = [*prefix, *attrs]
        self._items = [(_kind(a), a, r.fetch_item_name(_display(a))) for a in plan]
        self._items_seen = self._items
        if not self.has_flags:
            flags = FetchAttribute("FLAGS")
            self._items_seen = [
                *self._items[: len(prefix)],
                (_VIEW, flags, b"FLAGS"),
                *self._items[len(prefix) :],
            ]
        # message_now() serves responses made only of view items and whole small bodies.
        self._simple = all(kind != _OTHER for kind, _a, _n in self._items)

    def _view_value(self, attr: FetchAttribute, uid: int, vi: int) -> bytes:
        view = self.sel.view
        name = attr.name
        if name == "FLAGS":
            flags = flag_list_bytes(view.flags[vi], view.keywords[vi], self.sel.is_recent(uid))
            return b"FLAGS " + flags
        if name == "UID":
            return r.fetch_uid(uid)
        if name == "RFC822.SIZE":
            return r.fetch_rfc822_size(view.sizes[vi])
        return r.fetch_modseq(view.modseqs[vi])

    def view_item_response(self, i: int) -> bool:
        """Write the response of a view-only FETCH; False if the message is gone."""
        sel = self.sel
        uid = sel.uids[i]
        vi = sel.view.index_of(uid)
        if vi is None:
            return False
        items = self._items_seen if uid in self.seen_now else self._items
        values = [self._view_value(a, uid, vi) for _kind, a, _name in items]
        self.out.buffer(r.fetch_response(i + 1, values))
        return True

    def message_now(self, i: int, fetched: FetchedMessage) -> bool:
        """Write the response for message index ``i`` if it needs nothing but the view and
        the message's bytes in memory (``FETCH (UID BODY.PEEK[])`` of small messages);
        False if :meth:`message` must do it."""
        data = fetched.data
        if not self._simple or data is None:
            return False
        uid = fetched.uid
        view = self.sel.view
        vi = view.index_of(uid)
        if vi is None:
            return False
        items = self._items_seen if uid in self.seen_now else self._items
        parts = [b"* %d FETCH (" % (i + 1)]
        for kind, attr, item_name in items:
            if len(parts) > 1:
                parts.append(b" ")
            if kind == _WHOLE_BODY:
                parts.append(item_name + b" {%d}\r\n" % len(data))
                parts.append(data)
            elif attr.name == "UID":
                parts.append(b"UID %d" % uid)
            else:
                parts.append(self._view_value(attr, uid, vi))
        parts.append(b")\r\n")
        self.out.buffer_parts(parts)
        return True

    async def message(self, i: int, fetched: FetchedMessage) -> None:
        """Write the response for message index ``i``."""
        sel = self.sel
        out = self.out
        uid = fetched.uid
        vi = sel.view.index_of(uid)
        record = fetched.record
        size = sel.view.sizes[vi] if vi is not None else record.size
        pieces: list[bytes | tuple[FetchAttribute, _Stream]] = []
        streamed = False
        items = self._items_seen if uid in self.seen_now else self._items
        for kind, attr, item_name in items:
            if kind == _WHOLE_BODY:
                data = fetched.data
                if data is not None:
                    pieces.append(item_name + b" {%d}\r\n" % len(data) + data)
                    continue
            name = attr.name
            if kind == _VIEW:
                if vi is None:
                    pieces.append(self._record_value(attr, fetched))
                else:
                    pieces.append(self._view_value(attr, uid, vi))
            elif name == "INTERNALDATE":
                pieces.append(
                    r.fetch_internaldate(_internal_date(record.internal_date, record.internal_tz))
                )
            elif name == "ENVELOPE":
                assert fetched.summary is not None
                pieces.append(r.fetch_envelope(fetched.summary.envelope))
            elif name == "BODYSTRUCTURE":
                assert fetched.summary is not None
                pieces.append(r.fetch_bodystructure(fetched.summary.bodystructure))
            elif name == "BODY" and attr.section is None:
                assert fetched.summary is not None
                pieces.append(r.fetch_bodystructure(fetched.summary.body, extensible=False))
            else:
                piece = await self._section(attr, fetched, size)
                streamed = streamed or not isinstance(piece, bytes)
                pieces.append(piece)
        if not streamed:
            out.buffer(b"* %d FETCH (%b)\r\n" % (i + 1, b" ".join(cast(list[bytes], pieces))))
            if out.paused:
                await out.drain()
            return
        out.buffer(b"* %d FETCH (" % (i + 1))
        first = True
        for piece in pieces:
            if not first:
                out.buffer(b" ")
            first = False
            if isinstance(piece, bytes):
                out.buffer(piece)
            else:
                await self._stream(piece[0], piece[1], fetched, size)
        out.buffer(b")\r\n")
        if out.paused:
            await out.drain()

    def _record_value(self, attr: FetchAttribute, fetched: FetchedMessage) -> bytes:
        rec = fetched.record
        if attr.name == "FLAGS":
            return b"FLAGS " + flag_list_bytes(rec.flags, rec.keywords, self.sel.is_recent(rec.uid))
        if attr.name == "UID":
            return r.fetch_uid(rec.uid)
        if attr.name == "RFC822.SIZE":
            return r.fetch_rfc822_size(rec.size)
        return r.fetch_modseq(rec.modseq)

    async def _section(
        self, attr: FetchAttribute, fetched: FetchedMessage, size: int
    ) -> bytes | tuple[FetchAttribute, _Stream]:
        section = _section_of(attr)
        assert section is not None
        display = _display(attr)
        name = r.fetch_item_name(display)
        if attr.name in ("BINARY", "BINARY.SIZE"):
            data = await _binary(fetched, section, size)
            if attr.name == "BINARY.SIZE":
                return r.fetch_binary_size(section, len(data))
            return _literal(name, _partial_bytes(data, attr), binary=True)
        if section.text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
            if section.part:
                assert fetched.summary is not None
                header = await _header_of(fetched, _span(fetched.summary, section))
            else:
                header = fetched.header or b""
            return _literal(name, _partial_bytes(_select_fields(header, section), attr))
        if not section.part and section.text == "HEADER":
            header_bytes = fetched.header
            if header_bytes is None:
                first, last = _root_span(fetched, section, size)
                header_bytes = await _read_range(fetched, first, last, INLINE_MAX * 16)
            return _literal(name, _partial_bytes(header_bytes, attr))
        span: tuple[int, int] | None
        if not section.part and section.text is None:
            span = (0, size)
        elif not section.part:
            span = _root_span(fetched, section, size)
        else:
            assert fetched.summary is not None
            span = _span(fetched.summary, section)
        if span is None or span[1] <= span[0]:
            return _literal(name, b"")
        start, end = _with_partial(span, attr)
        stream_end: int | None = end
        if not section.part and section.text is None and attr.partial is None:
            stream_end = None  # the whole message: the prefetched stream's key
        elif not section.part and section.text is None:
            stream_end = end
        if end - start <= INLINE_MAX:
            data = await _read_range(fetched, start, stream_end, INLINE_MAX)
            return _literal(name, data)
        return display, _Stream(start, stream_end)

    async def _stream(
        self, attr: FetchAttribute, piece: _Stream, fetched: FetchedMessage, size: int
    ) -> None:
        out = self.out
        stream = fetched.open_body(piece.start, piece.end)
        length = stream.size
        out.buffer(r.fetch_literal_header(attr, length))
        if length >= SENDFILE_MIN and out.sendfile_ok:
            file_range = stream.file_range
            if file_range is not None:
                handle, offset, count = file_range
                fd = handle.fileno()
                if fd is not None and count == length and await out.sendfile(fd, offset, count):
                    return
        await out.copy_stream(stream, length)


def _internal_date(timestamp: int, tz_minutes: int) -> dt.datetime:
    zone = dt.timezone(dt.timedelta(minutes=tz_minutes))
    return dt.datetime.fromtimestamp(timestamp, zone)
