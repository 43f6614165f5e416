"""``latency``: every operation takes a fixed delay plus optional jitter.

Our stand-in for NFS and object storage.  Each open, each read request that reaches this
layer, each commit and each metadata call costs one "round trip" of ``delay`` (+ a uniform
``jitter`` from a seeded RNG).  Buffered writes are local and cost nothing, as with a real
client library.  Reads issued while others are in flight overlap, so parallel requests
cost one round trip per batch: exactly what prefetch is meant to exploit.  A read asked
for while the open is still in flight is pipelined behind it (one round trip for both, as
an object store's GET), so it completes when the open does.
"""

from __future__ import annotations

import asyncio
import errno
import random
from collections.abc import AsyncIterator

from aiodbox.fs.api import FS, FileHandle, FsStat, Perms
from aiodbox.fs.errors import FsError
from aiodbox.fs.wrappers.base import WrapperFS, WrapperHandle

_MAX_UNCLAIMED_READS = 64


class LatencyHandle(WrapperHandle):
    """A handle whose open, reads and commits each cost one round trip."""

    def __init__(self, inner: FileHandle, fs: LatencyFS) -> None:
        super().__init__(inner)
        self._fs = fs
        self._timer_done = False
        self._reads: dict[int, bytes | FsError | None] = {}
        self._commit: tuple[str, str | None, FsError | None] | None = None
        asyncio.get_running_loop().call_later(fs.next_delay(), self._open_timer)

    def _open_timer(self) -> None:
        self._timer_done = True
        if self.inner.opened:
            self._notify_open()

    def _on_inner_open(self) -> None:
        if self._timer_done:
            self._notify_open()

    def _on_inner_input(self, start: int | None, end: int | None) -> None:
        """Inner data reaches readers only through :meth:`_fetch`, after the delay."""

    @property
    def opened(self) -> bool:
        return self._timer_done and self.inner.opened

    @property
    def open_error(self) -> FsError | None:
        return self.inner.open_error if self.opened else None

    def pread(self, size: int, offset: int) -> bytes:
        if self.opened and self.inner.open_error is not None:
            raise self.inner.open_error
        if offset in self._reads:
            result = self._reads[offset]
            if result is None or not self.opened:
                raise BlockingIOError(errno.EAGAIN, "read in progress")
            del self._reads[offset]
            if isinstance(result, FsError):
                raise result
            return result[:size]
        if len(self._reads) >= _MAX_UNCLAIMED_READS:
            for key in [k for k, v in self._reads.items() if v is not None][:8]:
                del self._reads[key]
        self._reads[offset] = None
        loop = asyncio.get_running_loop()
        loop.call_later(self._fs.next_delay(), self._fetch, size, offset)
        raise BlockingIOError(errno.EAGAIN, "read started")

    def _fetch(self, size: int, offset: int) -> None:
        if offset not in self._reads:
            return
        if not self.opened:
            # The request was sent right behind the open (pipelined, as an object store
            # GET is one request): it completes once the open has.
            self.on_next_open(lambda: self._fetch(size, offset))
            return
        if self.inner.open_error is not None:
            self._reads[offset] = self.inner.open_error
            self._notify_input(offset, offset + 1)
            return
        try:
            data = self.inner.pread(size, offset)
        except BlockingIOError:
            self.inner.on_next_input(lambda: self._fetch(size, offset), offset)
            return
        except FsError as e:
            self._reads[offset] = e
            self._notify_input(offset, offset + 1)
        else:
            self._reads[offset] = data
            self._notify_input(offset, offset + max(len(data), 1))

    def commit(self, filename: str | None = None) -> None:
        state = self._commit
        if state is None:
            self._commit = ("running", filename, None)
            asyncio.get_running_loop().call_later(self._fs.next_delay(), self._do_commit, filename)
            raise BlockingIOError(errno.EAGAIN, "commit started")
        status, fname, err = state
        if fname != filename:
            raise FsError("commit", self.path, errno.EINVAL, "a different commit is pending")
        if status == "running":
            raise BlockingIOError(errno.EAGAIN, "commit in progress")
        self._commit = None
        if err is not None:
            raise err

    def _do_commit(self, filename: str | None) -> None:
        try:
            self.inner.commit(filename)
        except BlockingIOError:
            self.inner.on_next_output(lambda: self._do_commit(filename))
            return
        except FsError as e:
            self._commit = ("done", filename, e)
        else:
            self._commit = ("done", filename, None)
        self.path = self.inner.path
        self._notify_output()

    def try_lock(self) -> bool:
        if not self.opened:
            raise BlockingIOError(errno.EAGAIN, "open in progress")
        return self.inner.try_lock()

    def rollback(self) -> None:
        if self._commit is not None and self._commit[0] == "running":
            raise FsError("rollback", self.path, errno.EBUSY, "commit in progress")
        self._commit = None
        self.inner.rollback()


class LatencyFS(WrapperFS):
    """Adds ``delay`` seconds (+ up to ``jitter``) to every operation."""

    name = "latency"

    def __init__(self, inner: FS, delay: float, jitter: float = 0.0, seed: int = 0) -> None:
        super().__init__(inner)
        if delay < 0 or jitter < 0:
            raise ValueError("latency delay and jitter must be >= 0")
        self.delay = delay
        self.jitter = jitter
        self._rng = random.Random(seed)

    def next_delay(self) -> float:
        """The delay for the next operation."""
        return self.delay + (self._rng.uniform(0, self.jitter) if self.jitter else 0.0)

    def wrap(self, handle: FileHandle) -> FileHandle:
        return LatencyHandle(handle, self)

    async def _trip(self) -> None:
        await asyncio.sleep(self.next_delay())

    async def stat(self, path: str) -> FsStat:
        await self._trip()
        return await self.inner.stat(path)

    async def delete(self, path: str) -> None:
        await self._trip()
        await self.inner.delete(path)

    async def rename(self, src: str, dst: str) -> None:
        await self._trip()
        await self.inner.rename(src, dst)

    async def link(self, src: str, dst: str) -> None:
        await self._trip()
        await self.inner.link(src, dst)

    async def mkdir(self, path: str, perms: Perms | None = None) -> None:
        await self._trip()
        await self.inner.mkdir(path, perms)

    async def rmdir(self, path: str) -> None:
        await self._trip()
        await self.inner.rmdir(path)

    async def iterate(self, prefix: str, *, dirs: bool = False) -> AsyncIterator[str]:
        await self._trip()
        async for p in self.inner.iterate(prefix, dirs=dirs):
            yield p
