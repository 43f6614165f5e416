"""``randomfail``: EIO at operation boundaries, with a probability and a seed.

A failing run can be replayed with the same seed (Dovecot's ``fs-randomfail.c``).
Failures are injected *before* the inner operation runs (an open that completes, a read
that returned data, a write, the start of a commit, a metadata call), so an injected
commit failure never leaves anything visible: exactly the guarantee callers rely on.
"""

from __future__ import annotations

import errno
import random
from collections.abc import AsyncIterator

from aiodbox.fs.api import FS, FileHandle, FsStat, Perms
from aiodbox.fs.errors import FsError
from aiodbox.fs.wrappers.base import WrapperFS, WrapperHandle


class RandomFailHandle(WrapperHandle):
    """A handle whose operations fail with EIO at random."""

    def __init__(self, inner: FileHandle, fs: RandomFailFS) -> None:
        super().__init__(inner)
        self._fs = fs
        self._injected_open_error: FsError | None = None
        self._decided_open = False
        self._committing = False
        if inner.opened:
            self._decide_open()

    def _decide_open(self) -> None:
        if not self._decided_open:
            self._decided_open = True
            if self.inner.open_error is None and self._fs.roll():
                self._injected_open_error = self._fs.error("open", self.path)
                self.inner.close()

    def _on_inner_open(self) -> None:
        self._decide_open()
        self._notify_open()

    @property
    def open_error(self) -> FsError | None:
        if self.inner.opened:
            self._decide_open()
        return self._injected_open_error or self.inner.open_error

    def pread(self, size: int, offset: int) -> bytes:
        if self.open_error is not None:
            raise self.open_error
        data = self.inner.pread(size, offset)
        if self._fs.roll():
            raise self._fs.error("pread", self.path)
        return data

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self.open_error is not None:
            raise self.open_error
        if self._fs.roll():
            raise self._fs.error("write", self.path)
        return self.inner.write(data)

    def commit(self, filename: str | None = None) -> None:
        if not self.inner.opened:
            # The open's fate is decided when it finishes; the inner commit must not run
            # before that.  The open notification also wakes output waiters.
            raise BlockingIOError(errno.EAGAIN, "open in progress")
        if self.open_error is not None:
            raise self.open_error
        if not self._committing:
            if self._fs.roll():
                raise self._fs.error("commit", self.path)
            self._committing = True
        try:
            self.inner.commit(filename)
        except BlockingIOError:
            raise
        except BaseException:
            self._committing = False
            raise
        self._committing = False
        self.path = self.inner.path

    def try_lock(self) -> bool:
        if self.open_error is not None:
            raise self.open_error
        return self.inner.try_lock()


class RandomFailFS(WrapperFS):
    """Fails operations with EIO with ``probability``, from a seeded RNG."""

    name = "randomfail"

    def __init__(self, inner: FS, probability: float, seed: int = 0) -> None:
        super().__init__(inner)
        if not 0.0 <= probability <= 1.0:
            raise ValueError("randomfail probability must be within 0..1")
        self.probability = probability
        self._rng = random.Random(seed)
        self.injected = 0

    def roll(self) -> bool:
        """Decide whether the next operation fails."""
        if self.probability and self._rng.random() < self.probability:
            self.injected += 1
            return True
        return False

    @staticmethod
    def error(op: str, path: str) -> FsError:
        return FsError(op, path, errno.EIO, "injected by randomfail")

    def wrap(self, handle: FileHandle) -> FileHandle:
        return RandomFailHandle(handle, self)

    def _maybe_fail(self, op: str, path: str) -> None:
        if self.roll():
            raise self.error(op, path)

    async def stat(self, path: str) -> FsStat:
        self._maybe_fail("stat", path)
        return await self.inner.stat(path)

    async def delete(self, path: str) -> None:
        self._maybe_fail("delete", path)
        await self.inner.delete(path)

    async def rename(self, src: str, dst: str) -> None:
        self._maybe_fail("rename", src)
        await self.inner.rename(src, dst)

    async def link(self, src: str, dst: str) -> None:
        self._maybe_fail("link", dst)
        await self.inner.link(src, dst)

    async def mkdir(self, path: str, perms: Perms | None = None) -> None:
        self._maybe_fail("mkdir", path)
        await self.inner.mkdir(path, perms)

    async def rmdir(self, path: str) -> None:
        self._maybe_fail("rmdir", path)
        await self.inner.rmdir(path)

    async def iterate(self, prefix: str, *, dirs: bool = False) -> AsyncIterator[str]:
        self._maybe_fail("iterate", prefix)
        async for p in self.inner.iterate(prefix, dirs=dirs):
            yield p

    def stats(self) -> dict[str, object]:
        return {"randomfail": {"injected": self.injected}, **self.inner.stats()}
