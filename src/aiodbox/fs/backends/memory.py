"""The ``memory`` backend: the reference semantics of the FS contract, with fault knobs.

Files are inodes (a bytearray and a lock owner) that names point to, so hard links,
rename-over and open handles on replaced files behave as on a POSIX filesystem.  Every
background step (open, read, flush, commit) completes on a later loop iteration (or after
``faults.delay`` seconds), never inside the call that started it, so callers exercise
their ``BlockingIOError`` paths exactly as with a real backend.

Fault knobs (``MemoryFS.faults``) make asynchronous failure deterministic in tests:
``fail(op, errno, path=None, times=1)`` makes the next matching operation(s) fail,
``delay`` postpones every completion, ``read_chunk`` caps how many bytes one read returns.
"""

from __future__ import annotations

import asyncio
import errno
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from aiodbox.fs import paths
from aiodbox.fs.api import FS, CreateMode, FileHandle, FsProperty, FsStat, OpenMode, Perms
from aiodbox.fs.errors import FsClosed, FsError, FsNotFound, fs_error


@dataclass
class _Inode:
    data: bytearray = field(default_factory=bytearray)
    mtime: float = field(default_factory=time.time)
    locked_by: object | None = None


@dataclass
class _Fault:
    op: str
    err: int
    path: str | None
    times: int


class MemoryFaults:
    """Deterministic fault injection for :class:`MemoryFS`."""

    def __init__(self) -> None:
        self.delay = 0.0
        self.read_chunk: int | None = None
        self._faults: list[_Fault] = []

    def fail(self, op: str, err: int = errno.EIO, path: str | None = None, times: int = 1) -> None:
        """Make the next ``times`` operations ``op`` (on ``path``, or any) fail with ``err``.

        ``op`` is one of: open, pread, write, commit, stat, delete, rename, link, mkdir,
        rmdir, iterate.
        """
        self._faults.append(_Fault(op, err, path, times))

    def take(self, op: str, path: str) -> int | None:
        for f in self._faults:
            if f.op == op and (f.path is None or f.path == path):
                f.times -= 1
                if f.times <= 0:
                    self._faults.remove(f)
                return f.err
        return None


class MemoryHandle(FileHandle):
    """A handle of :class:`MemoryFS`."""

    def __init__(self, fs: MemoryFS, path: str, kind: str, create_mode: CreateMode | None) -> None:
        super().__init__(path)
        self._fs = fs
        self._kind = kind
        self._create_mode = create_mode
        self._inode: _Inode | None = None
        self._opened = False
        self._open_error: FsError | None = None
        self._closed = False
        self._committed_once = kind != "create"
        self._buffer = bytearray()  # accepted, not yet flushed
        self._staged = bytearray()  # flushed, not yet committed
        self._flushing = False
        self._ready: dict[int, bytes] = {}
        self._reading: set[int] = set()
        self._read_errors: dict[int, FsError] = {}
        self._commit_state: tuple[str, str | None, FsError | None] | None = None

    # plumbing
    def _later(self, fn: Callable[[], None]) -> None:
        loop = asyncio.get_running_loop()
        if self._fs.faults.delay:
            loop.call_later(self._fs.faults.delay, fn)
        else:
            loop.call_soon(fn)

    def _start_open(self) -> None:
        def done() -> None:
            err = self._fs.faults.take("open", self.path)
            if err is not None:
                self._open_error = fs_error("open", self.path, err)
            elif self._kind != "create":
                inode = self._fs._files.get(self.path)
                if inode is None:
                    self._open_error = fs_error("open", self.path, errno.ENOENT)
                else:
                    self._inode = inode
            else:
                self._inode = _Inode()
            self._opened = True
            self._notify_open()

        self._later(done)

    @property
    def opened(self) -> bool:
        return self._opened

    @property
    def open_error(self) -> FsError | None:
        return self._open_error

    def _check(self, op: str) -> None:
        if self._closed:
            raise FsClosed(op, self.path, errno.EBADF, "handle is closed")
        if self._open_error is not None:
            raise self._open_error

    def pread(self, size: int, offset: int) -> bytes:
        self._check("pread")
        if size < 0 or offset < 0:
            raise ValueError("size and offset must be >= 0")
        if not self._opened:
            raise BlockingIOError(errno.EAGAIN, "open in progress")
        err = self._read_errors.pop(offset, None)
        if err is not None:
            raise err
        if not self._committed_once or size == 0:
            return b""
        ready = self._ready.pop(offset, None)
        if ready is not None:
            return ready[:size]
        if offset in self._reading:
            raise BlockingIOError(errno.EAGAIN, "read in progress")
        self._reading.add(offset)

        def done() -> None:
            self._reading.discard(offset)
            err = self._fs.faults.take("pread", self.path)
            assert self._inode is not None
            end = offset + 1
            if err is not None:
                self._read_errors[offset] = fs_error("pread", self.path, err)
            else:
                n = size if self._fs.faults.read_chunk is None else self._fs.faults.read_chunk
                data = bytes(self._inode.data[offset : offset + max(n, 1)])
                self._ready[offset] = data
                end = offset + max(len(data), 1)
            self._notify_input(offset, end)

        self._later(done)
        raise BlockingIOError(errno.EAGAIN, "read started")

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._check("write")
        if self._kind == "read":
            raise FsError("write", self.path, errno.EBADF, "opened read-only")
        err = self._fs.faults.take("write", self.path)
        if err is not None:
            raise fs_error("write", self.path, err)
        room = self._fs.write_buffer_size - len(self._buffer)
        if room <= 0:
            raise BlockingIOError(errno.EAGAIN, "write buffer full")
        n = min(room, len(data))
        self._buffer += data[:n]
        if not self._flushing:
            self._flushing = True

            def flushed() -> None:
                self._flushing = False
                self._staged += self._buffer
                self._buffer.clear()
                self._notify_output()

            self._later(flushed)
        return n

    def commit(self, filename: str | None = None) -> None:
        state = self._commit_state
        if state is not None:
            status, fname, err = state
            if fname != filename:
                raise FsError("commit", self.path, errno.EINVAL, "a different commit is pending")
            if status == "running":
                raise BlockingIOError(errno.EAGAIN, "commit in progress")
            self._commit_state = None
            if err is not None:
                raise err
            return
        self._check("commit")
        if self._kind == "read":
            raise FsError("commit", self.path, errno.EBADF, "opened read-only")
        if filename is not None:
            if self._committed_once:
                raise FsError("commit", self.path, errno.EINVAL, "file name given after creation")
            paths.check_filename("commit", self.path, filename)
        self._commit_state = ("running", filename, None)

        def run() -> None:
            if not self._opened:  # commit waits for the open
                self.on_next_open(run)
                return
            error: FsError | None = self._open_error
            if error is None:
                try:
                    self._do_commit(filename)
                except FsError as e:
                    error = e
            self._commit_state = ("done", filename, error)
            self._notify_output()

        self._later(run)
        raise BlockingIOError(errno.EAGAIN, "commit started")

    def _do_commit(self, filename: str | None) -> None:
        fs = self._fs
        err = fs.faults.take("commit", self.path)
        if err is not None:
            raise fs_error("commit", self.path, err)
        data = bytes(self._staged + self._buffer)
        assert self._inode is not None
        if not self._committed_once:
            directory, name = paths.split(self.path)
            final = paths.join(directory, filename or name)
            if self._create_mode is CreateMode.FAIL_IF_EXISTS and final in fs._files:
                raise fs_error("commit", final, errno.EEXIST)
            fs._make_parents(final)
            self._inode.data[:] = data
            self._inode.mtime = time.time()
            fs._files[final] = self._inode
            self.path = final
            self._committed_once = True
        else:
            self._inode.data += data
            self._inode.mtime = time.time()
        self._staged.clear()
        self._buffer.clear()

    def rollback(self) -> None:
        if self._commit_state is not None and self._commit_state[0] == "running":
            raise FsError("rollback", self.path, errno.EBUSY, "commit in progress")
        self._commit_state = None
        self._buffer.clear()
        self._staged.clear()

    def close(self) -> None:
        if self._closed:
            return
        if self._commit_state is None or self._commit_state[0] != "running":
            self.rollback()
        self.unlock()
        self._closed = True

    @property
    def size(self) -> int | None:
        if not self._opened or self._inode is None:
            return None
        return len(self._inode.data) if self._committed_once else 0

    def try_lock(self) -> bool:
        self._check("try_lock")
        if not self._opened:
            raise BlockingIOError(errno.EAGAIN, "open in progress")
        assert self._inode is not None
        if self._inode.locked_by is None:
            self._inode.locked_by = self
        return self._inode.locked_by is self

    def unlock(self) -> None:
        if self._inode is not None and self._inode.locked_by is self:
            self._inode.locked_by = None

    def size_under_lock(self) -> int | None:
        inode = self._inode
        if self._closed or inode is None or inode.locked_by is not self:
            return None
        if self._fs._files.get(self.path) is not inode:
            raise FsNotFound("stat", self.path, errno.ENOENT, "deleted since it was opened")
        return len(inode.data)


class MemoryFS(FS):
    """An in-memory filesystem (one per instance; gone with the process)."""

    name = "memory"
    properties = (
        FsProperty.LOCKS
        | FsProperty.APPEND
        | FsProperty.RENAME
        | FsProperty.LINK
        | FsProperty.ITER
        | FsProperty.DIRECTORIES
    )

    def __init__(self, write_buffer_size: int = 256 * 1024, **_ignored: Any) -> None:
        self._files: dict[str, _Inode] = {}
        self._dirs: set[str] = {""}
        self.faults = MemoryFaults()
        self.write_buffer_size = write_buffer_size

    def _make_parents(self, path: str) -> None:
        directory = paths.split(path)[0]
        while directory not in self._dirs:
            self._dirs.add(directory)
            directory = paths.split(directory)[0]

    def _handle(self, op: str, path: str, kind: str, mode: CreateMode | None) -> MemoryHandle:
        try:
            norm = paths.normalize(op, path)
        except FsError as e:
            h = MemoryHandle(self, path, kind, mode)
            h._opened, h._open_error = True, e
            return h
        h = MemoryHandle(self, norm, kind, mode)
        h._start_open()
        return h

    def open(self, path: str, mode: OpenMode = OpenMode.READONLY) -> FileHandle:
        return self._handle("open", path, "append" if mode is OpenMode.APPEND else "read", None)

    def create(
        self,
        path: str,
        mode: CreateMode = CreateMode.FAIL_IF_EXISTS,
        perms: Perms | None = None,
    ) -> FileHandle:
        return self._handle("create", path, "create", mode)

    async def _step(self, op: str, path: str) -> None:
        await asyncio.sleep(self.faults.delay)
        err = self.faults.take(op, path)
        if err is not None:
            raise fs_error(op, path, err)

    async def stat(self, path: str) -> FsStat:
        norm = paths.normalize("stat", path, allow_root=True)
        await self._step("stat", norm)
        inode = self._files.get(norm)
        if inode is not None:
            return FsStat(len(inode.data), inode.mtime, False)
        if norm in self._dirs:
            return FsStat(0, 0.0, True)
        raise fs_error("stat", norm, errno.ENOENT)

    async def delete(self, path: str) -> None:
        norm = paths.normalize("delete", path)
        await self._step("delete", norm)
        if self._files.pop(norm, None) is None:
            raise fs_error("delete", norm, errno.EISDIR if norm in self._dirs else errno.ENOENT)

    async def rename(self, src: str, dst: str) -> None:
        s, d = paths.normalize("rename", src), paths.normalize("rename", dst)
        await self._step("rename", s)
        inode = self._files.pop(s, None)
        if inode is None:
            raise fs_error("rename", s, errno.ENOENT)
        self._make_parents(d)
        self._files[d] = inode

    async def link(self, src: str, dst: str) -> None:
        s, d = paths.normalize("link", src), paths.normalize("link", dst)
        await self._step("link", s)
        inode = self._files.get(s)
        if inode is None:
            raise fs_error("link", s, errno.ENOENT)
        if d in self._files or d in self._dirs:
            raise fs_error("link", d, errno.EEXIST)
        self._make_parents(d)
        self._files[d] = inode

    async def mkdir(self, path: str, perms: Perms | None = None) -> None:
        norm = paths.normalize("mkdir", path)
        await self._step("mkdir", norm)
        if norm in self._files:
            raise fs_error("mkdir", norm, errno.EEXIST)
        self._make_parents(norm + "/x")

    async def rmdir(self, path: str) -> None:
        norm = paths.normalize("rmdir", path)
        await self._step("rmdir", norm)
        if norm not in self._dirs:
            raise fs_error("rmdir", norm, errno.ENOENT)
        prefix = norm + "/"
        if any(p.startswith(prefix) for p in self._files) or any(
            d.startswith(prefix) for d in self._dirs
        ):
            raise fs_error("rmdir", norm, errno.ENOTEMPTY)
        self._dirs.discard(norm)

    async def iterate(self, prefix: str, *, dirs: bool = False) -> AsyncIterator[str]:
        norm = paths.normalize("iterate", prefix, allow_root=True)
        await self._step("iterate", norm)
        names = self._dirs if dirs else self._files.keys()
        found = sorted(p for p in names if p and paths.split(p)[0] == norm)
        for p in found:
            yield p

    def stats(self) -> dict[str, Any]:
        return {"memory": {"files": len(self._files), "dirs": len(self._dirs)}}
