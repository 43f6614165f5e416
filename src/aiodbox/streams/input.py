"""Non-blocking input streams over FS handles (the seed's "Async IO streams").

``InputStream.read()`` works like a non-blocking socket read: it returns bytes that are
already buffered, ``b""`` at the end, or raises ``BlockingIOError`` after asking the handle
for more (``pread`` starts the background read-ahead).  A stream can be created before its
handle finished opening; a missing file surfaces as ``FileNotFoundError`` on ``read``.

A stream covers a byte range of the file, ``[start, end)``, or ``[start, EOF)`` when
``end`` is None, so a window onto one message inside a multi-message file is just a
stream with both bounds (CPython's ``mailbox._PartialFile`` is the model).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from aiodbox.fs.api import FileHandle

DEFAULT_READAHEAD = 64 * 1024


class UnexpectedEOF(EOFError):
    """A bounded stream's file ended before the stream's ``end`` (a truncated file)."""


class InputStream:
    """Reads ``[start, end)`` of a handle without ever blocking."""

    def __init__(
        self,
        handle: FileHandle,
        start: int = 0,
        end: int | None = None,
        *,
        readahead: int = DEFAULT_READAHEAD,
        preload: tuple[int, bytes] | None = None,
    ) -> None:
        """Stream ``[start, end)`` of ``handle``.

        ``preload`` is ``(file offset, bytes)`` already read (e.g. while locating the
        message): the part of the range it covers is served from it without I/O.
        """
        if start < 0 or (end is not None and end < start):
            raise ValueError(f"invalid stream range [{start}, {end})")
        if readahead < 1:
            raise ValueError("readahead must be positive")
        self.handle = handle
        self.start = start
        self.end = end
        self.readahead = readahead
        self._pos = start
        self._pending = b""
        if preload is not None:
            at, data = preload
            if at <= start < at + len(data):
                stop = len(data) if end is None else min(len(data), end - at)
                self._pending = data[start - at : stop]
                self._pos = at + stop
        self._callback: Callable[[], None] | None = None
        self._armed = False
        self._at_eof = False

    @property
    def offset(self) -> int:
        """File offset of the next byte :meth:`read` returns."""
        return self._pos - len(self._pending)

    @property
    def eof(self) -> bool:
        """True once every byte of the range was returned."""
        if self._pending:
            return False
        return self._at_eof or (self.end is not None and self._pos >= self.end)

    def read(self, max_size: int | None = None) -> bytes:
        """Return buffered bytes (at most ``max_size``, by default the read-ahead size), or
        ``b""`` at the end of the range.

        Raises:
            BlockingIOError: no data buffered yet; the readable callback fires later.
            UnexpectedEOF: the file ended before ``end``.
            FsError: the open or a read failed.
        """
        if max_size is not None and max_size <= 0:
            return b""
        if max_size is None:
            max_size = self.readahead  # (a preload may hold more than one read's worth)
        data = self._pending
        if not data:
            if self._at_eof:
                return b""
            want = self.readahead
            if self.end is not None:
                want = min(want, self.end - self._pos)
                if want <= 0:
                    return b""
            try:
                data = self.handle.pread(want, self._pos)
            except BlockingIOError:
                self._arm()
                raise
            if not data:
                if self.end is not None:
                    raise UnexpectedEOF(
                        f"{self.handle.path}: file ends at {self._pos}, stream wants {self.end}"
                    )
                self._at_eof = True
                return b""
            self._pos += len(data)
        if len(data) > max_size:
            self._pending = data[max_size:]
            return data[:max_size]
        self._pending = b""
        return data

    def unread(self, data: bytes) -> None:
        """Push ``data`` (the tail of what ``read`` returned) back in front of the stream."""
        self._pending = data + self._pending

    def set_readable_callback(self, cb: Callable[[], None] | None) -> None:
        """Call ``cb`` on the loop when :meth:`read` may return data again."""
        self._callback = cb

    def _arm(self) -> None:
        if not self._armed:
            self._armed = True
            self.handle.on_next_input(self._on_input, self._pos)

    def _on_input(self) -> None:
        self._armed = False
        if self._callback is not None:
            self._callback()

    async def wait_readable(self) -> None:
        """Await the next input notification of the handle."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not fut.done():
                fut.set_result(None)

        self.handle.on_next_input(wake, None if self._pending else self._pos)
        await fut

    async def aread(self, max_size: int | None = None) -> bytes:
        """Await :meth:`read` (``b""`` at the end)."""
        while True:
            try:
                return self.read(max_size)
            except BlockingIOError:
                await self.wait_readable()

    async def read_all(self, limit: int) -> bytes:
        """Await the rest of the range; refuse (``ValueError``) to hold more than ``limit``."""
        parts: list[bytes] = []
        total = 0
        while chunk := await self.aread():
            total += len(chunk)
            if total > limit:
                raise ValueError(f"{self.handle.path}: more than {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        while chunk := await self.aread():
            yield chunk


def window(
    handle: FileHandle, offset: int, length: int, *, readahead: int = DEFAULT_READAHEAD
) -> InputStream:
    """A stream over exactly ``length`` bytes at ``offset`` (one message in an mdbox file)."""
    return InputStream(handle, offset, offset + length, readahead=readahead)
