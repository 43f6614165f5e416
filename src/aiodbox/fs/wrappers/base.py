"""Pass-through base classes for FS wrappers (Dovecot's ``fs-wrapper.c``).

A wrapper subclasses :class:`WrapperFS` (and, if it changes handle behaviour,
:class:`WrapperHandle`) and overrides only what it changes.  A wrapper handle forwards
the inner handle's notifications to its own listeners, so callbacks keep working
through any stack.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from aiodbox.fs.api import FS, CreateMode, FileHandle, FsStat, OpenMode, Perms
from aiodbox.fs.errors import FsError


class WrapperHandle(FileHandle):
    """Forwards every call to ``inner``; notifications flow back up."""

    def __init__(self, inner: FileHandle) -> None:
        super().__init__(inner.path)
        self.inner = inner
        inner._callbacks["open"] = self._on_inner_open
        inner._upstream_input = self._on_inner_input
        inner._callbacks["output"] = self._on_inner_output

    def _on_inner_open(self) -> None:
        self._notify_open()

    def _on_inner_input(self, start: int | None, end: int | None) -> None:
        self._notify_input(start, end)

    def _on_inner_output(self) -> None:
        self.path = self.inner.path
        self._notify_output()

    @property
    def opened(self) -> bool:
        return self.inner.opened

    @property
    def open_error(self) -> FsError | None:
        return self.inner.open_error

    def pread(self, size: int, offset: int) -> bytes:
        return self.inner.pread(size, offset)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        return self.inner.write(data)

    def commit(self, filename: str | None = None) -> None:
        self.inner.commit(filename)
        self.path = self.inner.path

    def rollback(self) -> None:
        self.inner.rollback()

    def close(self) -> None:
        self.inner.close()

    async def aclose(self) -> None:
        await self.inner.aclose()

    def try_lock(self) -> bool:
        return self.inner.try_lock()

    def unlock(self) -> None:
        self.inner.unlock()

    def size_under_lock(self) -> int | None:
        return self.inner.size_under_lock()

    def fileno(self) -> int | None:
        return self.inner.fileno()

    @property
    def size(self) -> int | None:
        return self.inner.size if self.opened else None


class WrapperFS(FS):
    """Forwards every call to ``inner``."""

    handle_class: type[WrapperHandle] | None = None
    """Set to wrap handles; None passes the inner handles through unchanged."""

    def __init__(self, inner: FS) -> None:
        self._inner = inner
        self.properties = inner.properties
        self.name = f"{self.name}:{inner.name}"

    @property
    def inner(self) -> FS:
        return self._inner

    def wrap(self, handle: FileHandle) -> FileHandle:
        """Wrap an inner handle (override for handles with extra constructor arguments)."""
        return handle if self.handle_class is None else self.handle_class(handle)

    def open(self, path: str, mode: OpenMode = OpenMode.READONLY) -> FileHandle:
        return self.wrap(self._inner.open(path, mode))

    def create(
        self,
        path: str,
        mode: CreateMode = CreateMode.FAIL_IF_EXISTS,
        perms: Perms | None = None,
    ) -> FileHandle:
        return self.wrap(self._inner.create(path, mode, perms))

    async def stat(self, path: str) -> FsStat:
        return await self._inner.stat(path)

    async def delete(self, path: str) -> None:
        await self._inner.delete(path)

    async def rename(self, src: str, dst: str) -> None:
        await self._inner.rename(src, dst)

    async def link(self, src: str, dst: str) -> None:
        await self._inner.link(src, dst)

    async def mkdir(self, path: str, perms: Perms | None = None) -> None:
        await self._inner.mkdir(path, perms)

    async def rmdir(self, path: str) -> None:
        await self._inner.rmdir(path)

    async def iterate(self, prefix: str, *, dirs: bool = False) -> AsyncIterator[str]:
        async for p in self._inner.iterate(prefix, dirs=dirs):
            yield p

    def stats(self) -> dict[str, Any]:
        return self._inner.stats()

    async def aclose(self) -> None:
        await self._inner.aclose()
