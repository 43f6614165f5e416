"""``stats``: counts and latency per operation, reported through ``FS.stats()``.

Every operation is measured by one context manager (``_measure``) that pairs its begin
and end; handle operations that complete in the background (open, commit) are timed from
the call that started them to the notification that finished them.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

from aiodbox.fs.api import FS, FileHandle, FsStat, Perms
from aiodbox.fs.errors import FsError
from aiodbox.fs.wrappers.base import WrapperFS, WrapperHandle


@dataclass
class OpStats:
    """Counters of one operation kind."""

    count: int = 0
    errors: int = 0
    total_seconds: float = 0.0
    max_seconds: float = 0.0

    def add(self, seconds: float, failed: bool) -> None:
        self.count += 1
        self.errors += failed
        self.total_seconds += seconds
        self.max_seconds = max(self.max_seconds, seconds)

    def as_dict(self) -> dict[str, float | int]:
        mean = self.total_seconds / self.count if self.count else 0.0
        return {
            "count": self.count,
            "errors": self.errors,
            "mean_ms": round(mean * 1000, 3),
            "max_ms": round(self.max_seconds * 1000, 3),
        }


class StatsHandle(WrapperHandle):
    """Counts reads, writes and bytes; times the open and each commit."""

    def __init__(self, inner: FileHandle, fs: StatsFS) -> None:
        super().__init__(inner)
        self._fs = fs
        self._open_started: float | None = time.perf_counter()
        self._commit_started: float | None = None
        if inner.opened:
            self._record_open()

    def _record_open(self) -> None:
        if self._open_started is not None:
            self._fs.record("open", time.perf_counter() - self._open_started, self.open_error)
            self._open_started = None

    def _on_inner_open(self) -> None:
        self._record_open()
        super()._on_inner_open()

    def pread(self, size: int, offset: int) -> bytes:
        try:
            data = self.inner.pread(size, offset)
        except BlockingIOError:
            self._fs.counters["pread_blocked"] += 1
            raise
        self._fs.counters["pread_ready"] += 1
        self._fs.counters["bytes_read"] += len(data)
        return data

    def write(self, data: bytes | bytearray | memoryview) -> int:
        n = self.inner.write(data)
        self._fs.counters["bytes_written"] += n
        return n

    def commit(self, filename: str | None = None) -> None:
        if self._commit_started is None:
            self._commit_started = time.perf_counter()
        try:
            super().commit(filename)
        except BlockingIOError:
            raise
        except FsError as e:
            self._end_commit(e)
            raise
        self._end_commit(None)

    def _end_commit(self, err: FsError | None) -> None:
        assert self._commit_started is not None
        self._fs.record("commit", time.perf_counter() - self._commit_started, err)
        self._commit_started = None


class StatsFS(WrapperFS):
    """Measures every operation of the FS below it."""

    name = "stats"

    def __init__(self, inner: FS) -> None:
        super().__init__(inner)
        self.ops: dict[str, OpStats] = {}
        self.counters: dict[str, int] = {
            "pread_ready": 0,
            "pread_blocked": 0,
            "bytes_read": 0,
            "bytes_written": 0,
        }

    def record(self, op: str, seconds: float, err: BaseException | None) -> None:
        """Add one measurement of ``op``."""
        self.ops.setdefault(op, OpStats()).add(seconds, err is not None)

    @contextlib.contextmanager
    def _measure(self, op: str) -> Iterator[None]:
        start = time.perf_counter()
        err: BaseException | None = None
        try:
            yield
        except BaseException as e:
            err = e
            raise
        finally:
            failed = err if err is None or isinstance(err, OSError) else None
            self.record(op, time.perf_counter() - start, failed)

    def wrap(self, handle: FileHandle) -> FileHandle:
        return StatsHandle(handle, self)

    async def stat(self, path: str) -> FsStat:
        with self._measure("stat"):
            return await self.inner.stat(path)

    async def delete(self, path: str) -> None:
        with self._measure("delete"):
            await self.inner.delete(path)

    async def rename(self, src: str, dst: str) -> None:
        with self._measure("rename"):
            await self.inner.rename(src, dst)

    async def link(self, src: str, dst: str) -> None:
        with self._measure("link"):
            await self.inner.link(src, dst)

    async def mkdir(self, path: str, perms: Perms | None = None) -> None:
        with self._measure("mkdir"):
            await self.inner.mkdir(path, perms)

    async def rmdir(self, path: str) -> None:
        with self._measure("rmdir"):
            await self.inner.rmdir(path)

    async def iterate(self, prefix: str, *, dirs: bool = False) -> AsyncIterator[str]:
        with self._measure("iterate"):
            items = [p async for p in self.inner.iterate(prefix, dirs=dirs)]
        for p in items:
            yield p

    def stats(self) -> dict[str, Any]:
        ops = {name: s.as_dict() for name, s in sorted(self.ops.items())}
        return {"stats": {"ops": ops, **self.counters}, **self.inner.stats()}
