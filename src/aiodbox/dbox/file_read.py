"""Reading dbox files over the FS API: messages, body streams, body checks, repair scans.

Theory of operation
-------------------
Opening a message reads only its framing, never its body:

- sdbox (``u.N``, one record): ``fs.stat`` gives the file size while the open runs in the
  background; then the first and the last 512 bytes are read at once (one round trip
  together). v3: the codec's :func:`~aiodbox.dbox.codec.read_sdbox_tail` finds the record
  from the tail (the tail read grows on ``NeedBytes``). v2: the file header and the
  30-byte message header give the body size; the metadata after the body is usually in
  the tail already.
- mdbox (``m.N``, a record at a known offset in a shared handle): v3: the record start
  (``01 02 LF``) and the trailer at ``offset + 3 + body_size`` are read at once and
  checked. v2: the message header at ``offset`` gives the size, then the metadata is read.

Every read goes through the handle's awaitable ``read`` and the codec's parse-or-
``NeedBytes`` loop (:func:`_parse_at`), so a parse never waits on I/O and I/O never
parses. Bad bytes become :class:`DboxCorruptedError`; I/O failures stay the FS's
:class:`~aiodbox.fs.errors.FsError`, untouched, so callers can repair on the one and
retry or report the other.

A body is served by a :class:`BodyStream`: a non-blocking window over the body bytes
(``read`` returns buffered bytes, ``b""`` at the end, or raises ``BlockingIOError`` and
arms the readable callback). v3 bodies and v2 bodies without bare LFs are passed
through; other v2 bodies go through :class:`~aiodbox.dbox.v2.LfToCrlf` chunk by chunk.
Offsets given to ``open_body`` are IMAP offsets; a v2 stream that starts past 0 converts
and drops the bytes before ``start`` (it cannot know where they end otherwise).
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Final, TypeVar

from aiodbox.dbox.codec import (
    FileHeader,
    Metadata,
    Record,
    parse_file_header,
    read_record,
    read_sdbox_tail,
    read_trailer,
    record_metadata,
    record_span,
    sdbox_body_span,
)
from aiodbox.dbox.fix import V2Scan, V3Scan, scan_file
from aiodbox.dbox.format import (
    DIGEST_SIZE,
    MAX_METADATA,
    MDBOX_METADATA_RESERVE,
    RECORD_START,
    SDBOX_TAIL_READ,
    TRAILER_LEN,
    V2_MAGIC_POST,
    V2_MAGIC_PRE,
    V2_SIZE_DIGITS,
    V2_SIZE_OFFSET,
    V2_TYPE_NORMAL,
    Corrupted,
    NeedBytes,
    parse_hex,
)
from aiodbox.dbox.v2 import (
    LfToCrlf,
    V2FileHeader,
    V2Metadata,
    _parse_v2_metadata,
    parse_v2_file_header,
)
from aiodbox.fs.api import FS, FileHandle
from aiodbox.fs.errors import FsError, FsNotSupported
from aiodbox.streams.input import DEFAULT_READAHEAD, InputStream, UnexpectedEOF

_T = TypeVar("_T")
_A = TypeVar("_A")
_B = TypeVar("_B")

HEADER_READ: Final = 128
"""First read for a file header (v3 headers are at most 70 bytes, Dovecot's v2 ~16)."""
SCAN_CHUNK: Final = 1 << 20
"""Read size of :func:`scan`."""
SCAN_INLINE_LIMIT: Final = 1 << 20
"""Files up to this size are scanned on the loop; larger ones in a worker thread."""
_READY_STREAK: Final = 32
"""``BodyStream.aread`` yields to the loop after this many reads served at once."""
MDBOX_WHOLE_READ: Final = (
    DEFAULT_READAHEAD - TRAILER_LEN - MDBOX_METADATA_RESERVE - len(RECORD_START)
)
"""mdbox records whose body is at most this long are read whole when opened (one read
instead of one for the framing and one more for the body)."""


# ------------------------------------------------------------------------------- errors


class DboxError(Exception):
    """Root of the errors of the dbox file layer (I/O errors stay ``FsError``)."""


class DboxCorruptedError(DboxError):
    """The file's bytes are not a valid dbox file or record (repair, do not retry).

    Attributes:
        path: The FS path of the file.
        offset: File offset of the damaged record (0 for the file header).
        reason: A one-line human explanation from the codec.
    """

    def __init__(self, path: str, offset: int, reason: str) -> None:
        super().__init__(f"{path}: corrupted dbox record at offset {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.path, self.offset, self.reason))


class DboxReadOnlyError(DboxError):
    """The file is in a format aiodbox reads but never writes (Dovecot's v2)."""


# -------------------------------------------------------------------------- read helpers


async def _read_span(handle: FileHandle, offset: int, size: int) -> bytes:
    """Await ``size`` bytes at ``offset``; fewer only when the file ends first."""
    parts: list[bytes] = []
    got = 0
    while got < size:
        chunk = await handle.read(size - got, offset + got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


async def read_span(handle: FileHandle, offset: int, size: int) -> bytes:
    """Await ``size`` bytes at ``offset`` (fewer only when the file ends first)."""
    return await _read_span(handle, offset, size)


async def _concurrently(first: Awaitable[_A], second: Awaitable[_B]) -> tuple[_A, _B]:
    """Await both at once (two reads cost one round trip); cancel the other on failure."""
    tasks = (asyncio.ensure_future(first), asyncio.ensure_future(second))
    try:
        return await asyncio.gather(tasks[0], tasks[1])
    except BaseException:
        for task in tasks:
            task.cancel()
        raise


async def _parse_at(
    handle: FileHandle,
    offset: int,
    want: int,
    parse: Callable[[bytes, bool], _T | NeedBytes | Corrupted],
    *,
    have: bytes = b"",
) -> _T | Corrupted:
    """Read bytes at ``offset`` until ``parse(data, eof)`` stops asking for more.

    Args:
        handle: The file.
        offset: File offset of ``data[0]``.
        want: How many bytes to read first.
        parse: A codec reader: the value, ``NeedBytes(n)`` (the first ``n`` bytes from
            ``offset``), or ``Corrupted``.
        have: Bytes at ``offset`` the caller already read (saves a round trip).
    """
    data = have
    while True:
        if len(data) < want:
            data += await _read_span(handle, offset + len(data), want - len(data))
        eof = len(data) < want
        result = parse(data, eof)
        if not isinstance(result, NeedBytes):
            return result
        if eof:
            return Corrupted("truncated: the file ends inside the record")
        want = max(result.size, len(data) + 1)


def _known_at(known: Sequence[tuple[int, bytes]], offset: int) -> bytes:
    """The bytes at ``offset`` from an already read ``(file offset, bytes)`` span, if any."""
    for start, data in known:
        if start <= offset < start + len(data):
            return data[offset - start :]
    return b""


def _parse_any_header(data: bytes, eof: bool) -> FileHeader | V2FileHeader | NeedBytes | Corrupted:
    if data[:1] == b"3":
        return parse_file_header(data, eof=eof)
    if data[:1] == b"2":
        return parse_v2_file_header(data, eof=eof)
    if not data and not eof:
        return NeedBytes(HEADER_READ)
    return Corrupted("not a dbox file: the header is neither v2 nor v3")


def _parse_v2_message_header(
    data: bytes, header_size: int, eof: bool
) -> int | NeedBytes | Corrupted:
    """The message size from a v2 message header (the checks of ``v2._read_v2_at``)."""
    magic = data[:3]
    if magic != (V2_MAGIC_PRE + V2_TYPE_NORMAL)[: len(magic)]:
        return Corrupted("message header has a bad magic value")
    if len(data) < header_size:
        if eof:
            return Corrupted("truncated: the file ends inside a message header")
        return NeedBytes(header_size)
    if data[header_size - 1] != 0x0A:
        return Corrupted("message header does not end with LF")
    size = parse_hex(data[V2_SIZE_OFFSET : V2_SIZE_OFFSET + V2_SIZE_DIGITS], lowercase_only=False)
    if size is None:
        return Corrupted("message header size is not 16 hex digits")
    return size


def _parse_v2_metadata_block(
    data: bytes, eof: bool
) -> tuple[V2Metadata, int] | NeedBytes | Corrupted:
    """The v2 metadata block at ``data[0]`` (``LF 01 03 LF`` ... empty line) and its length."""
    magic_len = len(V2_MAGIC_POST)
    if data[:magic_len] != V2_MAGIC_POST[: min(len(data), magic_len)]:
        return Corrupted("no metadata block (LF 01 03 LF) after the message")
    if len(data) < magic_len:
        if eof:
            return Corrupted("truncated: the file ends inside the metadata")
        return NeedBytes(magic_len + MDBOX_METADATA_RESERVE)
    lines: list[bytes] = []
    pos = magic_len
    limit = magic_len + MAX_METADATA
    while True:
        lf = data.find(b"\n", pos, limit)
        if lf < 0:
            if eof or len(data) >= limit:
                return Corrupted("metadata has no end-of-metadata line")
            return NeedBytes(min(limit, max(2 * len(data), magic_len + MDBOX_METADATA_RESERVE)))
        line = data[pos:lf]
        pos = lf + 1
        if not line or line[:1] == b" ":
            metadata = _parse_v2_metadata(lines)
            if isinstance(metadata, Corrupted):
                return metadata
            return metadata, pos
        lines.append(line)


# --------------------------------------------------------------------------- body stream


class BodyStream:
    """A non-blocking stream over the bytes IMAP serves for one message (or a part of it).

    Same interface as :class:`~aiodbox.streams.input.InputStream`: :meth:`read` returns
    buffered bytes, ``b""`` at the end, or raises ``BlockingIOError`` (the readable
    callback fires, and :meth:`wait_readable` returns, when it may succeed); :meth:`aread`
    and ``async for`` await. It holds at most ``max(readahead, 2)`` bytes at any time.
    """

    def __init__(
        self,
        raw: InputStream,
        *,
        path: str,
        start: int,
        size: int,
        skip: int = 0,
        convert: bool = False,
    ) -> None:
        """Wrap ``raw``; use :meth:`DboxMessage.open_body` rather than this.

        Args:
            raw: The stored bytes to read from.
            path: The file's path, for errors.
            start: IMAP offset of the first byte delivered.
            size: How many bytes the stream delivers.
            skip: Converted bytes to drop first (v2 streams starting past 0).
            convert: Turn bare LFs into CRLF on the way.
        """
        self._raw = raw
        self._path = path
        self._start = start
        self._size = size
        self._skip = skip
        self._remaining = size
        self._delivered = 0
        self._convert = LfToCrlf() if convert else None
        self._pending = b""
        self._ready_streak = 0

    @property
    def size(self) -> int:
        """How many bytes the stream delivers in all (``end - start``, clamped)."""
        return self._size

    @property
    def position(self) -> int:
        """IMAP offset of the next byte :meth:`read` returns."""
        return self._start + self._delivered

    @property
    def buffered(self) -> int:
        """Bytes the stream holds right now (read from the file, not yet returned)."""
        return len(self._pending)

    @property
    def eof(self) -> bool:
        """True once every byte of the range was returned."""
        return not self._pending and (self._remaining == 0 or self._raw.eof)

    @property
    def file_range(self) -> tuple[FileHandle, int, int] | None:
        """``(handle, file offset, length)`` when the bytes are served as stored.

        Lets a server use ``os.sendfile`` (with ``handle.fileno()``) for what is left of
        the stream. None when the stream converts line ends.
        """
        if self._convert is not None:
            return None
        pending = len(self._pending)
        return self._raw.handle, self._raw.offset - pending, self._remaining + pending

    def read(self, max_size: int | None = None) -> bytes:
        """Return buffered bytes (at most ``max_size``), or ``b""`` at the end of the range.

        Raises:
            BlockingIOError: nothing is buffered; the readable callback fires later.
            DboxCorruptedError: the file ends inside the body.
            FsError: the open or a read failed.
        """
        if max_size is not None and max_size <= 0:
            return b""
        if not self._pending:
            self._fill()
        data = self._pending
        if max_size is not None and len(data) > max_size:
            self._pending = data[max_size:]
            data = data[:max_size]
        else:
            self._pending = b""
        self._delivered += len(data)
        return data

    def _fill(self) -> None:
        while self._remaining > 0:
            try:
                raw = self._raw.read()
            except UnexpectedEOF as e:
                raise DboxCorruptedError(
                    self._path, self._raw.offset, "truncated: the file ends inside the body"
                ) from e
            if not raw:
                return
            out = raw if self._convert is None else self._convert.feed(raw)
            if self._skip:
                if len(out) <= self._skip:
                    self._skip -= len(out)
                    continue
                out = out[self._skip :]
                self._skip = 0
            if len(out) > self._remaining:
                out = out[: self._remaining]
            self._remaining -= len(out)
            self._pending = out
            return

    def unread(self, data: bytes) -> None:
        """Push ``data`` (the tail of what ``read`` returned) back in front of the stream."""
        self._pending = data + self._pending
        self._delivered -= len(data)

    def set_readable_callback(self, cb: Callable[[], None] | None) -> None:
        """Call ``cb`` on the loop when :meth:`read` may return data again."""
        self._raw.set_readable_callback(cb)

    async def wait_readable(self) -> None:
        """Await until :meth:`read` may return data (at once if some is buffered)."""
        if self._pending:
            return
        await self._raw.wait_readable()

    async def aread(self, max_size: int | None = None) -> bytes:
        """Await :meth:`read` (``b""`` at the end).

        Like ``FileHandle.read``, a reader whose reads keep being served at once (cached
        files) yields to the loop every 32 of them, so it cannot starve other tasks.
        """
        while True:
            try:
                data = self.read(max_size)
            except BlockingIOError:
                self._ready_streak = 0
                await self.wait_readable()
                continue
            self._ready_streak += 1
            if self._ready_streak >= _READY_STREAK:
                self._ready_streak = 0
                await asyncio.sleep(0)
            return data

    async def read_all(self, limit: int) -> bytes:
        """Await the rest of the range; refuse (``ValueError``) to hold more than ``limit``."""
        parts: list[bytes] = []
        total = 0
        while chunk := await self.aread():
            total += len(chunk)
            if total > limit:
                raise ValueError(f"{self._path}: more than {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        while chunk := await self.aread():
            yield chunk


# ------------------------------------------------------------------------------- message


class DboxMessage:
    """One located message: its metadata, sizes, and streams over its body.

    Attributes:
        path: The file's FS path.
        format: ``"v3"`` or ``"v2"`` (Dovecot 2.3).
        offset: Where the record starts (v3 its ``01 02 LF``, v2 its message header).
        body_offset: Where the stored body starts.
        end: Just past the record.
        stored_size: Body bytes in the file.
        imap_size: Bytes IMAP serves (``RFC822.SIZE``): v3 the stored size; v2 ``V`` (or,
            if the record has no ``V``, counted while opening).
        guid: Message GUID; None only for a v2 record without ``G``.
        received: Received time (UNIX seconds), or None if not recorded.
        metadata: The record's metadata (:class:`Metadata` or :class:`V2Metadata`).
        handle: The handle the body is read through.
    """

    def __init__(
        self,
        handle: FileHandle,
        *,
        owns_handle: bool,
        format: str,
        offset: int,
        body_offset: int,
        end: int,
        stored_size: int,
        imap_size: int,
        metadata: Metadata | V2Metadata | Callable[[], Metadata],
    ) -> None:
        """Built by :func:`open_sdbox_message` and :func:`open_mdbox_message`.

        ``metadata`` may be a function that decodes it: called on first use (the FETCH
        of a body never needs it)."""
        self.handle = handle
        self.path = handle.path
        self.format = format
        self.offset = offset
        self.body_offset = body_offset
        self.end = end
        self.stored_size = stored_size
        self.imap_size = imap_size
        self._metadata = metadata
        self._owns_handle = owns_handle
        self.preload: tuple[int, bytes] | None = None
        """Bytes of the file already read (file offset, data): streams start from them."""

    @property
    def metadata(self) -> Metadata | V2Metadata:
        """The record's metadata (decoded on first use when it was deferred)."""
        metadata = self._metadata
        if callable(metadata):
            metadata = self._metadata = metadata()
        return metadata

    @property
    def guid(self) -> str | None:
        """Message GUID; None only for a v2 record without ``G``."""
        return self.metadata.guid

    @property
    def received(self) -> int | None:
        """Received time (UNIX seconds), or None if not recorded."""
        return self.metadata.received

    def __repr__(self) -> str:
        return (
            f"DboxMessage({self.path!r}, {self.format}, offset={self.offset}, "
            f"guid={self.guid!r}, imap_size={self.imap_size})"
        )

    @property
    def converts_line_ends(self) -> bool:
        """True if IMAP bytes differ from the stored bytes (a v2 body with bare LFs)."""
        return self.imap_size != self.stored_size

    def preloaded_body(self) -> bytes | None:
        """The whole IMAP body if the bytes read while opening hold all of it (small
        messages), else None.  No I/O."""
        preload = self.preload
        if preload is None or self.imap_size != self.stored_size:
            return None
        at, data = preload
        first = self.body_offset - at
        last = first + self.stored_size
        if first < 0 or last > len(data):
            return None
        if first == 0 and last == len(data):
            return data
        return data[first:last]

    def open_body(
        self, start: int = 0, end: int | None = None, *, readahead: int = DEFAULT_READAHEAD
    ) -> BodyStream:
        """Return a non-blocking stream over IMAP bytes ``[start, end)`` of the message.

        ``end`` None or past the message means its end; a ``start`` at or past the end
        gives an empty stream. Nothing is read before the first :meth:`BodyStream.read`.
        For a converted v2 body, a ``start`` past 0 reads and converts the bytes before
        it (streamed, not held).

        Raises:
            ValueError: ``start`` is negative, ``end < start`` or ``readahead < 1``.
        """
        if start < 0 or (end is not None and end < start):
            raise ValueError(f"invalid body range [{start}, {end})")
        if readahead < 1:
            raise ValueError("readahead must be positive")
        stop = self.imap_size if end is None else min(end, self.imap_size)
        first = min(start, stop)
        size = stop - first
        if not self.converts_line_ends:
            raw = InputStream(
                self.handle,
                self.body_offset + first,
                self.body_offset + first + size,
                readahead=readahead,
                preload=self.preload,
            )
            return BodyStream(raw, path=self.path, start=first, size=size)
        raw = InputStream(
            self.handle,
            self.body_offset,
            self.body_offset + self.stored_size,
            readahead=max(1, readahead // 2),
            preload=self.preload,
        )
        return BodyStream(raw, path=self.path, start=first, size=size, skip=first, convert=True)

    @property
    def owns_handle(self) -> bool:
        """Whether closing this message closes its handle (:meth:`aclose` may wait)."""
        return self._owns_handle

    def close(self) -> None:
        """Close the handle if this message owns it, without waiting for the clean-up."""
        if self._owns_handle:
            self._owns_handle = False
            self.handle.close()

    async def aclose(self) -> None:
        """Close the handle if this message owns it (sdbox); streams stop working then."""
        if self._owns_handle:
            self._owns_handle = False
            await self.handle.aclose()

    async def __aenter__(self) -> DboxMessage:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def _v3_message(
    handle: FileHandle,
    record: Record,
    *,
    owns_handle: bool,
    preload: tuple[int, bytes] | None = None,
) -> DboxMessage:
    """The message of a located v3 record (``preload``: bytes of the file already read)."""
    return _v3_at(
        handle,
        record.offset,
        record.body_size,
        record.end,
        record.metadata,
        owns_handle=owns_handle,
        preload=preload,
    )


def _v3_at(
    handle: FileHandle,
    offset: int,
    body_size: int,
    end: int,
    metadata: Metadata | Callable[[], Metadata],
    *,
    owns_handle: bool = False,
    preload: tuple[int, bytes] | None = None,
) -> DboxMessage:
    """The message of the v3 record at file ``offset`` with a ``body_size`` body, ending
    at ``end``; ``metadata`` may be a function that decodes it on first use."""
    msg = DboxMessage(
        handle,
        owns_handle=owns_handle,
        format="v3",
        offset=offset,
        body_offset=offset + len(RECORD_START),
        end=end,
        stored_size=body_size,
        imap_size=body_size,
        metadata=metadata,
    )
    msg.preload = preload
    return msg


def _corrupted(path: str, offset: int, result: Corrupted) -> DboxCorruptedError:
    return DboxCorruptedError(path, offset, result.reason)


async def _count_crlf_size(handle: FileHandle, offset: int, size: int) -> int:
    convert = LfToCrlf()
    async for chunk in InputStream(handle, offset, offset + size):
        convert.feed(chunk)
    return convert.size


async def _v2_message(
    handle: FileHandle,
    header: V2FileHeader,
    offset: int,
    *,
    owns_handle: bool,
    body_size: int | None = None,
    known: Sequence[tuple[int, bytes]] = (),
) -> DboxMessage:
    path = handle.path
    msg_header_size = header.msg_header_size
    size = await _parse_at(
        handle,
        offset,
        msg_header_size,
        lambda data, eof: _parse_v2_message_header(data, msg_header_size, eof),
        have=_known_at(known, offset),
    )
    if isinstance(size, Corrupted):
        raise _corrupted(path, offset, size)
    if body_size is not None and body_size != size:
        raise DboxCorruptedError(
            path, offset, f"message header says {size} bytes but the index says {body_size}"
        )
    body_offset = offset + msg_header_size
    meta_at = body_offset + size
    found = await _parse_at(
        handle,
        meta_at,
        len(V2_MAGIC_POST) + MDBOX_METADATA_RESERVE,
        _parse_v2_metadata_block,
        have=_known_at(known, meta_at),
    )
    if isinstance(found, Corrupted):
        raise _corrupted(path, offset, found)
    metadata, meta_len = found
    imap_size = metadata.virtual_size
    if imap_size is None:
        imap_size = await _count_crlf_size(handle, body_offset, size)
    elif not size <= imap_size <= 2 * size:
        raise DboxCorruptedError(
            path, offset, f"V={imap_size} is impossible for a {size}-byte message"
        )
    return DboxMessage(
        handle,
        owns_handle=owns_handle,
        format="v2",
        offset=offset,
        body_offset=body_offset,
        end=meta_at + meta_len,
        stored_size=size,
        imap_size=imap_size,
        metadata=metadata,
    )


async def read_file_header(handle: FileHandle) -> FileHeader | V2FileHeader:
    """Read and parse the header of a dbox file (v3 or Dovecot's v2).

    Pass the result as ``header=`` to :func:`open_mdbox_message` to save one read per
    message when several messages of one file are opened.

    Raises:
        DboxCorruptedError: the header is not a valid v2 or v3 file header.
        FsError: the open or a read failed.
    """
    header: FileHeader | V2FileHeader | Corrupted = await _parse_at(
        handle, 0, HEADER_READ, _parse_any_header
    )
    if isinstance(header, Corrupted):
        raise _corrupted(handle.path, 0, header)
    return header


async def open_mdbox_message(
    handle: FileHandle,
    offset: int,
    *,
    body_size: int | None = None,
    header: FileHeader | V2FileHeader | None = None,
    whole_limit: int = MDBOX_WHOLE_READ,
) -> DboxMessage:
    """Locate the record at ``offset`` of an mdbox file and check its framing.

    The handle is shared: the message does not own it (``DboxMessage.aclose`` leaves it
    open), and it must stay open while bodies are streamed.

    Args:
        handle: An open handle on the ``m.N`` file (READONLY or APPEND).
        offset: Where the record starts: v3 its ``01 02 LF``; v2 its 30-byte message
            header (the Dovecot map's offset).
        body_size: v3: the body size the index recorded (required; must equal ``Z``).
            v2: None (the message header has the size); if given, it must equal the
            size in the message header (this is not the map's record size).
        header: The file header from :func:`read_file_header`, if already known.
        whole_limit: A v3 record whose body is at most this long is read whole in one
            read (framing, body and trailer): its body streams are then served from
            those bytes (:attr:`DboxMessage.preload`).  Larger bodies are not read.

    Returns:
        The message.

    Raises:
        ValueError: a v3 record without ``body_size``, or a negative offset or size.
        DboxCorruptedError: the record is damaged (the codec's reason).
        FsError: the open or a read failed.
    """
    if offset < 0 or (body_size is not None and body_size < 0):
        raise ValueError("offset and body_size must not be negative")
    if header is None:
        header = await read_file_header(handle)
    if isinstance(header, V2FileHeader):
        return await _v2_message(handle, header, offset, owns_handle=False, body_size=body_size)
    if body_size is None:
        raise ValueError("a v3 mdbox record needs the body size the index recorded")
    sep = header.sep
    path = handle.path
    if body_size <= whole_limit:
        return await _mdbox_whole_record(handle, offset, body_size, sep)
    trailer_at = offset + len(RECORD_START) + body_size
    start, trailer = await _concurrently(
        _read_span(handle, offset, len(RECORD_START)),
        _parse_at(
            handle,
            trailer_at,
            TRAILER_LEN + MDBOX_METADATA_RESERVE,
            lambda data, eof: read_trailer(data, sep, offset=trailer_at, eof=eof),
        ),
    )
    if start != RECORD_START:
        reason = "truncated: the file ends before the record" if len(start) < 3 else ""
        raise DboxCorruptedError(path, offset, reason or "record does not start with 01 02 LF")
    if isinstance(trailer, Corrupted):
        raise _corrupted(path, offset, trailer)
    if trailer.metadata.size != body_size:
        raise DboxCorruptedError(
            path, offset, f"Z is {trailer.metadata.size} but the index says {body_size}"
        )
    return DboxMessage(
        handle,
        owns_handle=False,
        format="v3",
        offset=offset,
        body_offset=offset + len(RECORD_START),
        end=trailer.end,
        stored_size=body_size,
        imap_size=body_size,
        metadata=trailer.metadata,
    )


def open_mdbox_message_now(
    handle: FileHandle, offset: int, body_size: int, header: FileHeader | V2FileHeader
) -> DboxMessage | None:
    """:func:`open_mdbox_message` for a small v3 record, without waiting: the message if
    the handle can serve the whole record at once (the page cache), else None (nothing
    was started that needs waiting for; use :func:`open_mdbox_message`).

    Raises:
        DboxCorruptedError: the record is damaged.
        FsError: the open or a read failed.
    """
    if not isinstance(header, FileHeader) or body_size > MDBOX_WHOLE_READ or offset < 0:
        return None
    want = len(RECORD_START) + body_size + TRAILER_LEN + MDBOX_METADATA_RESERVE
    try:
        data = handle.pread(want, offset)
    except BlockingIOError:
        return None
    return mdbox_message_from_span(handle, header, offset, body_size, data, offset)


def mdbox_record_span(offset: int, body_size: int) -> int:
    """Bytes from ``offset`` that hold a v3 mdbox record with a ``body_size`` body and
    metadata of the usual size (what :func:`mdbox_message_from_span` needs)."""
    return len(RECORD_START) + body_size + TRAILER_LEN + MDBOX_METADATA_RESERVE


def mdbox_message_from_span(
    handle: FileHandle,
    header: FileHeader,
    offset: int,
    body_size: int,
    data: bytes,
    data_offset: int,
) -> DboxMessage | None:
    """The v3 record at ``offset`` of an mdbox file, from bytes already read: ``data``
    holds the file from ``data_offset`` (one read may serve several records).  The body
    is kept as the message's preload.

    Returns:
        The message, or None if ``data`` does not hold all of the record (read it with
        :func:`open_mdbox_message`).

    Raises:
        DboxCorruptedError: the record is damaged.
    """
    rel = offset - data_offset
    if rel < 0 or rel >= len(data):
        return None
    end = record_span(data, rel, header.sep, body_size)
    if end is not None:  # the usual record: located without decoding anything
        start = rel + len(RECORD_START)
        return _v3_at(
            handle,
            offset,
            body_size,
            offset + end - rel,
            lambda: record_metadata(data, rel, header.sep, body_size),
            preload=(offset + len(RECORD_START), data[start : start + body_size]),
        )
    return _mdbox_message_parsed(handle, header, offset, body_size, data, rel)


def _mdbox_message_parsed(
    handle: FileHandle, header: FileHeader, offset: int, body_size: int, data: bytes, rel: int
) -> DboxMessage | None:
    """:func:`mdbox_message_from_span` for a record :func:`record_span` did not accept
    (at ``data[rel]``): the general reader says what it is."""
    stop = rel + mdbox_record_span(offset, body_size)
    window = data if rel == 0 and stop >= len(data) else data[rel:stop]
    record = read_record(window, header.sep, body_size, offset=offset)
    if isinstance(record, NeedBytes):
        return None  # a short read (or the end of the file): the awaitable path decides
    if isinstance(record, Corrupted):
        raise _corrupted(handle.path, offset, record)
    return _v3_message(handle, record, owns_handle=False, preload=(offset, window))


async def _mdbox_whole_record(
    handle: FileHandle, offset: int, body_size: int, sep: bytes
) -> DboxMessage:
    """A small v3 mdbox record read in one go: start, body and trailer (the body is kept
    as the message's preload)."""
    want = len(RECORD_START) + body_size + TRAILER_LEN + MDBOX_METADATA_RESERVE
    data = await _read_span(handle, offset, want)
    while True:
        record = read_record(data, sep, body_size, offset=offset, eof=len(data) < want)
        if not isinstance(record, NeedBytes):
            break
        want = max(record.size, len(data) + 1)
        data += await _read_span(handle, offset + len(data), want - len(data))
    if isinstance(record, Corrupted):
        if len(data) < len(RECORD_START):
            record = Corrupted("truncated: the file ends before the record")
        raise _corrupted(handle.path, offset, record)
    return _v3_message(handle, record, owns_handle=False, preload=(offset, data))


async def _sdbox_v3(
    handle: FileHandle, header: FileHeader, size: int, head: bytes, tail: bytes
) -> DboxMessage:
    path = handle.path
    while True:
        record = read_sdbox_tail(tail, size, header=header)
        if not isinstance(record, NeedBytes):
            break
        want = min(size, max(record.size, len(tail) + 1))
        if want <= len(tail):
            record = Corrupted("the record cannot be located from the end of the file")
            break
        tail = await _read_span(handle, size - want, want)
        if len(tail) < want:
            record = Corrupted("truncated: the file is shorter than its size")
            break
    if isinstance(record, Corrupted):
        raise _corrupted(path, header.length, record)
    start = head[record.offset : record.offset + len(RECORD_START)]
    if start != RECORD_START:
        raise DboxCorruptedError(path, record.offset, "record does not start with 01 02 LF")
    return _v3_message(handle, record, owns_handle=True)


SDBOX_HEAD_READ = DEFAULT_READAHEAD
"""Bytes read from the start of an sdbox file while locating its message: most messages
fit, so the file is read once and the body stream is served from these bytes."""
HEADER_HEAD_READ = 4096
"""The same when only the message header will be wanted."""


async def open_sdbox_message(fs: FS, path: str, *, head_read: int = SDBOX_HEAD_READ) -> DboxMessage:
    """Open the sdbox file ``path`` (one message, v3 or v2) and locate its message.

    The first ``head_read`` bytes are asked for together with the open (the
    FS may pipeline them: one round trip for both); a file that fits is located from
    those bytes alone, and its body stream is served from them too.  A longer file costs
    one more round trip for its last 512 bytes.  The size comes from the open (a
    ``stat`` only where the backend does not tell it).

    Returns:
        The message; it owns its handle: ``await msg.aclose()`` (or ``async with``) when
        done with it and its streams.

    Raises:
        DboxCorruptedError: the file is not a valid sdbox file (the codec's reason).
        FsError: the open, stat or a read failed (``FsNotFound`` if it does not exist).
    """
    handle = fs.open(path)
    try:
        first = await _read_span(handle, 0, head_read)
        known_size = handle.size
        size = known_size if known_size is not None else (await fs.stat(path)).size
        if len(first) >= size:
            head = tail = first[:size]
        else:
            head = first
            tail_len = min(size, SDBOX_TAIL_READ)
            tail = await _read_span(handle, size - tail_len, tail_len)
            if len(tail) < tail_len:
                raise DboxCorruptedError(path, 0, "truncated: the file is shorter than its size")
        if len(first) < min(size, head_read):
            raise DboxCorruptedError(path, 0, "truncated: the file is shorter than its size")
        header = _parse_any_header(head, len(head) == size)
        if isinstance(header, NeedBytes):
            header = Corrupted("truncated: the file ends inside its header")
        if isinstance(header, Corrupted):
            raise _corrupted(path, 0, header)
        if isinstance(header, FileHeader):
            msg = await _sdbox_v3(handle, header, size, head, tail)
        else:
            known = ((0, head), (size - len(tail), tail))
            msg = await _v2_message(handle, header, header.length, owns_handle=True, known=known)
        msg.preload = (0, first)
        return msg
    except BaseException:
        await handle.aclose()
        raise


class _BytesHandle(FileHandle):
    """A read-only handle over bytes already read (a small file read whole)."""

    def __init__(self, path: str, data: bytes) -> None:
        super().__init__(path)
        self._data = data

    @property
    def opened(self) -> bool:
        return True

    @property
    def open_error(self) -> FsError | None:
        return None

    def pread(self, size: int, offset: int) -> bytes:
        if size < 0 or offset < 0:
            raise ValueError("size and offset must be >= 0")
        return self._data[offset : offset + size]

    def write(self, data: bytes | bytearray | memoryview) -> int:
        raise FsError("write", self.path, errno.EBADF, "opened read-only")

    def commit(self, filename: str | None = None) -> None:
        raise FsError("commit", self.path, errno.EBADF, "opened read-only")

    def rollback(self) -> None:
        return

    def close(self) -> None:
        return

    def try_lock(self) -> bool:
        raise FsNotSupported("lock", self.path, errno.ENOTSUP)

    @property
    def size(self) -> int | None:
        return len(self._data)


def sdbox_message_from_bytes(
    path: str, data: bytes, *, body_size: int | None = None
) -> DboxMessage | None:
    """The message of an sdbox file read whole (:meth:`FS.read_small_files`): parsed from
    ``data`` without I/O; its body streams are served from ``data``.  ``body_size``, the
    size the index recorded, is a hint that saves searching for the record.

    Returns:
        The message, or None for a Dovecot v2 file (use :func:`open_sdbox_message`).

    Raises:
        DboxCorruptedError: the file is not a valid sdbox file (the codec's reason).
    """
    span = None if body_size is None else sdbox_body_span(data, body_size)
    if span is not None:  # the usual file: located without decoding anything
        start, end = span
        stored = end - start
        return _v3_at(
            _BytesHandle(path, data),
            start - len(RECORD_START),
            stored,
            len(data),
            lambda: _sdbox_metadata(data, stored),
            preload=(0, data),
        )
    return _sdbox_message_parsed(path, data, body_size)


def _sdbox_message_parsed(path: str, data: bytes, body_size: int | None) -> DboxMessage | None:
    """:func:`sdbox_message_from_bytes` for a file :func:`sdbox_body_span` did not accept:
    the general readers say what it is."""
    size = len(data)
    header = _parse_any_header(data, True)
    if isinstance(header, V2FileHeader):
        return None
    if isinstance(header, NeedBytes):
        header = Corrupted("truncated: the file ends inside its header")
    if isinstance(header, Corrupted):
        raise _corrupted(path, 0, header)
    record = read_sdbox_tail(data, size, header=header, body_size=body_size)
    if isinstance(record, NeedBytes):
        record = Corrupted("the record cannot be located from the end of the file")
    if isinstance(record, Corrupted):
        raise _corrupted(path, header.length, record)
    if data[record.offset : record.offset + len(RECORD_START)] != RECORD_START:
        raise DboxCorruptedError(path, record.offset, "record does not start with 01 02 LF")
    return _v3_message(_BytesHandle(path, data), record, owns_handle=False, preload=(0, data))


def sdbox_body_from_bytes(path: str, data: bytes, body_size: int) -> bytes | None:
    """The IMAP body of an sdbox file read whole, without building a message: the usual
    file (see :func:`sdbox_body_span`) is checked and sliced; any other is parsed as
    :func:`sdbox_message_from_bytes` does.  ``body_size`` is the index's size.

    Returns:
        The body; None if it cannot be served from ``data`` (a Dovecot v2 file, or one
        whose body needs line-end conversion: use :func:`open_sdbox_message`).

    Raises:
        DboxCorruptedError: the file is not a valid sdbox file (the codec's reason).
    """
    span = sdbox_body_span(data, body_size)
    if span is not None:
        return data[span[0] : span[1]]
    msg = _sdbox_message_parsed(path, data, body_size)
    return None if msg is None else msg.preloaded_body()


def mdbox_body_from_span(
    handle: FileHandle,
    header: FileHeader,
    offset: int,
    body_size: int,
    data: bytes,
    data_offset: int,
) -> bytes | None:
    """The IMAP body of the v3 record at ``offset`` of an mdbox file, from bytes
    already read (``data`` holds the file from ``data_offset``), without building a
    message: the usual record (see :func:`record_span`) is checked and sliced; any other
    is parsed as :func:`mdbox_message_from_span` does.

    Returns:
        The body; None if ``data`` does not hold all of the record (use
        :func:`open_mdbox_message`).

    Raises:
        DboxCorruptedError: the record is damaged.
    """
    rel = offset - data_offset
    if rel < 0 or rel >= len(data):
        return None
    if record_span(data, rel, header.sep, body_size) is not None:
        start = rel + len(RECORD_START)
        return data[start : start + body_size]
    msg = _mdbox_message_parsed(handle, header, offset, body_size, data, rel)
    return None if msg is None else msg.preloaded_body()


def memory_body_stream(data: bytes, start: int = 0, end: int | None = None) -> BodyStream:
    """A :class:`BodyStream` over IMAP bytes ``[start, end)`` of a body held in memory
    (``data``, read whole): as :meth:`DboxMessage.open_body` serves a preloaded body.

    Raises:
        ValueError: ``start`` is negative or ``end < start``.
    """
    if start < 0 or (end is not None and end < start):
        raise ValueError(f"invalid body range [{start}, {end})")
    stop = len(data) if end is None else min(end, len(data))
    first = min(start, stop)
    raw = InputStream(_BytesHandle("<memory>", data), first, stop, preload=(0, data))
    return BodyStream(raw, path="<memory>", start=first, size=stop - first)


def _sdbox_metadata(data: bytes, body_size: int) -> Metadata:
    """The metadata of a v3 sdbox file that :func:`sdbox_body_span` accepted."""
    header = parse_file_header(data, eof=True)
    assert isinstance(header, FileHeader)  # (sdbox_body_span matched it)
    return record_metadata(data, header.length, header.sep, body_size)


# ------------------------------------------------------------------------------- checks


async def verify_body(msg: DboxMessage) -> Corrupted | None:
    """Stream the stored body and check it against the metadata (for fsck).

    v3: the body must match ``H`` (BLAKE2b), when the record has one. v2: the body with
    CRLF line ends must be ``V`` bytes, when the record has ``V``. The body is read in
    readahead-sized chunks; nothing is held.

    Returns:
        None if the body is intact, else ``Corrupted`` with the reason.

    Raises:
        FsError: a read failed.
    """
    raw = InputStream(msg.handle, msg.body_offset, msg.body_offset + msg.stored_size)
    digest = hashlib.blake2b(digest_size=DIGEST_SIZE)
    convert = LfToCrlf()
    try:
        async for chunk in raw:
            if msg.format == "v3":
                digest.update(chunk)
            else:
                convert.feed(chunk)
    except UnexpectedEOF:
        return Corrupted("truncated: the file ends inside the body")
    metadata = msg.metadata
    if isinstance(metadata, Metadata):
        if metadata.digest is not None and digest.hexdigest() != metadata.digest:
            return Corrupted("body does not match its BLAKE2b digest H")
    elif metadata.virtual_size is not None and convert.size != metadata.virtual_size:
        return Corrupted(
            f"V is {metadata.virtual_size} but the message has {convert.size} bytes with CRLF"
        )
    return None


def _join_and_scan(parts: list[bytes]) -> V3Scan | V2Scan | Corrupted:
    return scan_file(b"".join(parts))


async def scan(fs: FS, path: str) -> V3Scan | V2Scan | Corrupted:
    """Read the whole file ``path`` in chunks and run the repair scan on it.

    For offline repair: the file is held in memory for the scan. Reads are 1 MiB each;
    files larger than 1 MiB are joined and scanned in a worker thread, so the loop is
    never held for long.

    Returns:
        The codec's scan (:class:`V3Scan` or :class:`V2Scan`: intact records and damaged
        ranges), or ``Corrupted`` if the file is not recognisably a dbox file.

    Raises:
        FsError: the open or a read failed.
    """
    handle = fs.open(path)
    try:
        parts: list[bytes] = []
        offset = 0
        while chunk := await handle.read(SCAN_CHUNK, offset):
            parts.append(chunk)
            offset += len(chunk)
    finally:
        await handle.aclose()
    if offset > SCAN_INLINE_LIMIT:
        return await asyncio.to_thread(_join_and_scan, parts)
    return _join_and_scan(parts)
