"""Non-blocking output streams over FS handles.

``OutputStream.write()`` works like a non-blocking socket write: it returns how many bytes
the handle's buffer accepted, or raises ``BlockingIOError`` when it is full; the flush
callback fires when more can be written.  ``finish()`` commits (optionally naming the
file), ``abort()`` rolls back.  Nothing written is visible before ``finish`` completes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiodbox.fs.api import FileHandle


class OutputStream:
    """Appends to a created or APPEND-opened handle."""

    def __init__(self, handle: FileHandle) -> None:
        self.handle = handle
        self.bytes_written = 0
        self._callback: Callable[[], None] | None = None
        self._armed = False
        self._blocked = False

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Hand ``data`` to the handle; return how many bytes were accepted.

        Raises:
            BlockingIOError: nothing could be accepted; the flush callback fires later.
            FsError: the open or a background write failed.
        """
        try:
            n = self.handle.write(data)
        except BlockingIOError:
            self._blocked = True
            self._arm()
            raise
        self.bytes_written += n
        self._blocked = n < len(data)
        if self._blocked:
            self._arm()
        return n

    def set_flush_callback(self, cb: Callable[[], None] | None) -> None:
        """Call ``cb`` on the loop when more data can be written (or a commit finished)."""
        self._callback = cb

    def _arm(self) -> None:
        if not self._armed:
            self._armed = True
            self.handle.on_next_output(self._on_output)

    def _on_output(self) -> None:
        self._armed = False
        self._blocked = False
        if self._callback is not None:
            self._callback()

    async def drain(self) -> None:
        """Await buffer space (returns at once if the last write was accepted whole)."""
        if not self._blocked:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not fut.done():
                fut.set_result(None)

        self.handle.on_next_output(wake)
        await fut

    async def write_all(self, data: bytes | bytearray | memoryview) -> None:
        """Await until all of ``data`` was accepted."""
        view = memoryview(data)
        while view:
            try:
                n = self.write(view)
            except BlockingIOError:
                await self.drain()
                continue
            view = view[n:]

    async def finish(self, filename: str | None = None) -> None:
        """Commit everything written; with ``filename``, the created file gets that name.

        Raises:
            FsExists: the name exists and the handle was created with ``FAIL_IF_EXISTS``.
            FsError: the commit failed; nothing became visible.
        """
        await self.handle.acommit(filename)

    def abort(self) -> None:
        """Discard everything written since the last commit."""
        self.handle.rollback()
