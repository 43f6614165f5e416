"""The ``posix`` backend: local files, blocking calls on a worker-thread pool.

Each engine method is one job for :class:`~aiodbox.fs.backends.workers.WorkerPool` that
does a whole operation with plain ``os`` calls (the durable-create recipe of CPython's
``mailbox.Maildir``: temp file in the same directory, write, fsync, ``link``/``rename``,
fsync the directory).  Paths are opened beneath the root with ``openat2(RESOLVE_BENEATH)``
(:mod:`~aiodbox.fs.backends.beneath`), then worked on relative to directory descriptors.

Directory fsyncs are group-committed: a commit needs *an* fsync of its directory that
started after its link/rename; when one is already running, later commits wait for the
next one and share it, so N concurrent commits in a directory cost far fewer than N
directory fsyncs.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import stat as stat_mod
import threading
import time
from typing import Any

from aiodbox.fs import paths
from aiodbox.fs.api import FsStat, FsyncPolicy, Perms
from aiodbox.fs.backends.beneath import Beneath
from aiodbox.fs.backends.local import Engine, LocalFS, OpenedFile
from aiodbox.fs.backends.workers import WorkerPool

_O_PATH = getattr(os, "O_PATH", os.O_RDONLY)
_RWF_NOWAIT = getattr(os, "RWF_NOWAIT", 0)
_SMALL_COLD = 0.0005
"""Seconds per file above which small-file reads count as cold (one job per file)."""


def _write_all(fd: int, chunks: list[bytes], offset: int) -> int:
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            n = os.pwrite(fd, view, offset)
            offset += n
            view = view[n:]
    return offset


def _sync_file(fd: int, policy: FsyncPolicy) -> None:
    if policy is FsyncPolicy.ALWAYS:
        os.fsync(fd)
    elif policy is FsyncPolicy.OPTIMIZED:
        os.fdatasync(fd)


def _copy_range(src: int, dst: int, length: int, dst_offset: int) -> None:
    src_offset = 0
    while length > 0:
        try:
            n = os.copy_file_range(src, dst, length, src_offset, dst_offset)
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            data = os.pread(src, min(length, 1 << 20), src_offset)
            n = len(data)
            _write_all(dst, [data], dst_offset)
        if n == 0:
            raise OSError(errno.EIO, "spill file shorter than recorded")
        src_offset += n
        dst_offset += n
        length -= n


class DirSyncer:
    """Group commit of directory fsyncs (thread-safe; see the module docstring)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._next: dict[str, int] = {}
        self._done: dict[str, int] = {}
        self._running: set[str] = set()
        self.fsyncs = 0
        self.requests = 0

    def sync(self, key: str, dir_fd: int) -> None:
        """Return once an fsync of the directory that started after this call finished."""
        with self._cond:
            self.requests += 1
            target = self._next.get(key, 0)
            while self._done.get(key, -1) < target:
                if key in self._running:
                    self._cond.wait()
                    continue
                gen = self._next.get(key, 0)
                self._next[key] = gen + 1
                self._running.add(key)
                self._cond.release()
                try:
                    os.fsync(dir_fd)
                finally:
                    self._cond.acquire()
                    self._running.discard(key)
                    self._cond.notify_all()
                self.fsyncs += 1
                self._done[key] = max(self._done.get(key, -1), gen)


def name_staged(beneath: Beneath, directory: str, temp_name: str, final_name: str) -> None:
    """:meth:`Engine.name_now` for engines over real directories (blocking)."""
    dfd = beneath.open_dir("commit", directory)
    try:
        os.link(temp_name, final_name, src_dir_fd=dfd, dst_dir_fd=dfd)
        os.unlink(temp_name, dir_fd=dfd)
    finally:
        os.close(dfd)


def unlink_staged(beneath: Beneath, directory: str, name: str) -> None:
    """:meth:`Engine.unlink_now` for engines over real directories (blocking)."""
    dfd = beneath.open_dir("delete", directory)
    try:
        os.unlink(name, dir_fd=dfd)
    finally:
        os.close(dfd)


def sync_staged_dir(
    beneath: Beneath, dirsync: DirSyncer, directory: str, policy: FsyncPolicy
) -> None:
    """:meth:`Engine.sync_dir_now` for engines over real directories (blocking)."""
    if policy is FsyncPolicy.NEVER:
        return
    dfd = beneath.open_dir("commit", directory)
    try:
        dirsync.sync(directory, dfd)
    finally:
        os.close(dfd)


class ThreadEngine(Engine):
    """:class:`Engine` whose jobs run on a :class:`WorkerPool`."""

    name = "posix"

    def __init__(self, root: str, io_threads: int = 10, *, use_openat2: bool = True) -> None:
        self.beneath = Beneath(root, use_openat2=use_openat2)
        self.pool = WorkerPool(io_threads)
        self.dirsync = DirSyncer()
        self._small_cost = 0.0  # seconds per file of recent read_small jobs (a moving mean)

    @property
    def root(self) -> str:
        return self.beneath.root

    def _sync_dir(self, key: str, dir_fd: int, policy: FsyncPolicy) -> None:
        if policy is not FsyncPolicy.NEVER:
            self.dirsync.sync(key, dir_fd)

    # -------------------------------------------------------------- files

    def _open_read(self, path: str, small_limit: int) -> OpenedFile:
        fd = self.beneath.open("open", path, os.O_RDONLY)
        try:
            st = os.fstat(fd)
            if stat_mod.S_ISDIR(st.st_mode):
                raise IsADirectoryError(errno.EISDIR, "is a directory", path)
            if st.st_size <= small_limit:
                data = os.pread(fd, small_limit + 1, 0)
                if len(data) <= small_limit:
                    os.close(fd)
                    return OpenedFile(None, len(data), data)
            return OpenedFile(fd, st.st_size, None)
        except BaseException:
            os.close(fd)
            raise

    def open_read(self, path: str, small_limit: int) -> asyncio.Future[OpenedFile]:
        return self.pool.submit(self._open_read, path, small_limit)

    @property
    def nowait_opens(self) -> bool:  # type: ignore[override]
        return self.beneath.cached_opens and _RWF_NOWAIT != 0

    def read_small_now(self, path: str, limit: int) -> bytes | None:
        return self.beneath.read_cached(path, limit)

    def _read_small_one(self, path: str, limit: int) -> bytes | None:
        fd = self.beneath.open("open", path, os.O_RDONLY)
        try:
            st = os.fstat(fd)
            if stat_mod.S_ISDIR(st.st_mode):
                raise IsADirectoryError(errno.EISDIR, "is a directory", path)
            if st.st_size > limit:
                return None
            data = os.pread(fd, st.st_size + 1, 0)
            while len(data) > st.st_size:  # it grew since the fstat: read on to the end
                if len(data) > limit:
                    return None
                more = os.pread(fd, limit + 1 - len(data), len(data))
                if not more:
                    break
                data += more
            return data if len(data) <= limit else None
        finally:
            os.close(fd)

    def _read_small_job(self, paths: list[str], limit: int) -> list[bytes | BaseException | None]:
        started = time.perf_counter()
        out: list[bytes | BaseException | None] = []
        for path in paths:
            try:
                out.append(self._read_small_one(path, limit))
            except OSError as e:
                out.append(e)
        per_file = (time.perf_counter() - started) / max(1, len(paths))
        self._small_cost += (per_file - self._small_cost) / 8
        return out

    def read_small(
        self, paths: list[str], limit: int
    ) -> asyncio.Future[list[bytes | BaseException | None]]:
        """One worker job reads them all while that is cheap (the page cache); one job
        per file while recent files took long (a cold cache: the disk then sees them
        all at once)."""
        if len(paths) <= 1 or self._small_cost < _SMALL_COLD:
            return self.pool.submit(self._read_small_job, paths, limit)
        return asyncio.ensure_future(self._read_small_parallel(paths, limit))

    async def _read_small_parallel(
        self, paths: list[str], limit: int
    ) -> list[bytes | BaseException | None]:
        parts = await asyncio.gather(
            *(self.pool.submit(self._read_small_job, [p], limit) for p in paths)
        )
        return [res for part in parts for res in part]

    def _open_append(self, path: str) -> OpenedFile:
        fd = self.beneath.open("open", path, os.O_RDWR)
        try:
            st = os.fstat(fd)
            if stat_mod.S_ISDIR(st.st_mode):
                raise IsADirectoryError(errno.EISDIR, "is a directory", path)
        except BaseException:
            os.close(fd)
            raise
        return OpenedFile(fd, st.st_size, None)

    def open_append(self, path: str) -> asyncio.Future[OpenedFile]:
        return self.pool.submit(self._open_append, path)

    def _create_temp(self, directory: str, temp_name: str, perms: Perms) -> int:
        dfd = self.beneath.makedirs("create", directory, perms)
        try:
            fd = os.open(
                temp_name,
                os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                perms.mode,
                dir_fd=dfd,
            )
            try:
                os.fchmod(fd, perms.mode)
                if perms.gid is not None:
                    os.fchown(fd, -1, perms.gid)
            except BaseException:
                os.close(fd)
                os.unlink(temp_name, dir_fd=dfd)
                raise
        finally:
            os.close(dfd)
        return fd

    def create_temp(self, directory: str, temp_name: str, perms: Perms) -> asyncio.Future[int]:
        return self.pool.submit(self._create_temp, directory, temp_name, perms)

    def _create_spill(self, directory: str) -> int:
        try:
            return self.beneath.open("write", directory, os.O_TMPFILE | os.O_RDWR, 0o600)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
        dfd = self.beneath.open_dir("write", directory)
        try:
            name = paths.temp_name("spill", os.getpid())
            fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600, dir_fd=dfd)
            os.unlink(name, dir_fd=dfd)
        finally:
            os.close(dfd)
        return fd

    def create_spill(self, directory: str) -> asyncio.Future[int]:
        return self.pool.submit(self._create_spill, directory)

    def pread(self, fd: int, size: int, offset: int) -> asyncio.Future[bytes]:
        return self.pool.submit(os.pread, fd, size, offset)

    @staticmethod
    def _pwrite(fd: int, chunks: list[bytes], offset: int) -> None:
        _write_all(fd, chunks, offset)

    def pwrite(self, fd: int, chunks: list[bytes], offset: int) -> asyncio.Future[None]:
        return self.pool.submit(self._pwrite, fd, chunks, offset)

    def _commit_created(
        self,
        fd: int,
        directory: str,
        temp_name: str,
        final_name: str,
        replace: bool,
        chunks: list[bytes],
        offset: int,
        policy: FsyncPolicy,
    ) -> None:
        _write_all(fd, chunks, offset)
        _sync_file(fd, policy)
        dfd = self.beneath.open_dir("commit", directory)
        try:
            if replace:
                os.rename(temp_name, final_name, src_dir_fd=dfd, dst_dir_fd=dfd)
            else:
                os.link(temp_name, final_name, src_dir_fd=dfd, dst_dir_fd=dfd)
                os.unlink(temp_name, dir_fd=dfd)
            self._sync_dir(directory, dfd, policy)
        finally:
            os.close(dfd)

    def _write_whole(
        self,
        directory: str,
        temp_name: str,
        final_name: str,
        replace: bool,
        data: bytes,
        perms: Perms,
        policy: FsyncPolicy,
    ) -> None:
        fd = self._create_temp(directory, temp_name, perms)
        try:
            self._commit_created(fd, directory, temp_name, final_name, replace, [data], 0, policy)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):  # (gone already if the link was made)
                self._close([], (directory, temp_name))
            raise
        os.close(fd)

    def write_whole(
        self,
        directory: str,
        temp_name: str,
        final_name: str,
        replace: bool,
        data: bytes,
        perms: Perms,
        policy: FsyncPolicy,
    ) -> asyncio.Future[None]:
        return self.pool.submit(
            self._write_whole, directory, temp_name, final_name, replace, data, perms, policy
        )

    stages = True

    def _write_temp(
        self, directory: str, temp_name: str, data: bytes, perms: Perms, policy: FsyncPolicy
    ) -> None:
        fd = self._create_temp(directory, temp_name, perms)
        try:
            _write_all(fd, [data], 0)
            _sync_file(fd, policy)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                self._close([], (directory, temp_name))
            raise
        os.close(fd)

    def write_temp(
        self, directory: str, temp_name: str, data: bytes, perms: Perms, policy: FsyncPolicy
    ) -> asyncio.Future[None]:
        return self.pool.submit(self._write_temp, directory, temp_name, data, perms, policy)

    def name_now(self, directory: str, temp_name: str, final_name: str) -> None:
        name_staged(self.beneath, directory, temp_name, final_name)

    def unlink_now(self, directory: str, name: str) -> None:
        unlink_staged(self.beneath, directory, name)

    def sync_dir_now(self, directory: str, policy: FsyncPolicy) -> None:
        sync_staged_dir(self.beneath, self.dirsync, directory, policy)

    def commit_created(
        self,
        fd: int,
        directory: str,
        temp_name: str,
        final_name: str,
        replace: bool,
        chunks: list[bytes],
        offset: int,
        policy: FsyncPolicy,
    ) -> asyncio.Future[None]:
        return self.pool.submit(
            self._commit_created,
            fd,
            directory,
            temp_name,
            final_name,
            replace,
            chunks,
            offset,
            policy,
        )

    @staticmethod
    def _commit_append(
        fd: int, spill_fd: int | None, spill_len: int, chunks: list[bytes], policy: FsyncPolicy
    ) -> int:
        start = os.fstat(fd).st_size
        try:
            end = start
            if spill_len:
                assert spill_fd is not None
                _copy_range(spill_fd, fd, spill_len, end)
                end += spill_len
            end = _write_all(fd, chunks, end)
            _sync_file(fd, policy)
        except BaseException:
            os.ftruncate(fd, start)  # nothing of a failed commit stays behind
            raise
        if spill_len and spill_fd is not None:
            os.ftruncate(spill_fd, 0)
        return end

    def commit_append(
        self,
        fd: int,
        spill_fd: int | None,
        spill_len: int,
        chunks: list[bytes],
        policy: FsyncPolicy,
    ) -> asyncio.Future[int]:
        return self.pool.submit(self._commit_append, fd, spill_fd, spill_len, chunks, policy)

    def truncate(self, fd: int, length: int) -> asyncio.Future[None]:
        return self.pool.submit(os.ftruncate, fd, length)

    def _close(self, fds: list[int], unlink: tuple[str, str] | None) -> None:
        for fd in fds:
            os.close(fd)
        if unlink is not None:
            directory, name = unlink
            dfd = self.beneath.open_dir("close", directory)
            try:
                os.unlink(name, dir_fd=dfd)
            finally:
                os.close(dfd)

    def close(self, fds: list[int], unlink: tuple[str, str] | None = None) -> asyncio.Future[None]:
        return self.pool.submit(self._close, fds, unlink)

    # ---------------------------------------------------------- metadata

    def _stat(self, path: str) -> FsStat:
        fd = self.beneath.open("stat", path, _O_PATH)
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        return FsStat(st.st_size, st.st_mtime, stat_mod.S_ISDIR(st.st_mode))

    def stat(self, path: str) -> asyncio.Future[FsStat]:
        return self.pool.submit(self._stat, path)

    def _unlink(self, path: str, policy: FsyncPolicy) -> None:
        directory, name = paths.split(path)
        dfd = self.beneath.open_dir("delete", directory)
        try:
            os.unlink(name, dir_fd=dfd)
            if policy is FsyncPolicy.ALWAYS:
                self.dirsync.sync(directory, dfd)
        finally:
            os.close(dfd)

    def unlink(self, path: str, policy: FsyncPolicy) -> asyncio.Future[None]:
        return self.pool.submit(self._unlink, path, policy)

    def _rename(self, src: str, dst: str, policy: FsyncPolicy, link: bool) -> None:
        op = "link" if link else "rename"
        s_dir, s_name = paths.split(src)
        d_dir, d_name = paths.split(dst)
        sfd = self.beneath.open_dir(op, s_dir)
        try:
            dfd = self.beneath.makedirs(op, d_dir, Perms())
            try:
                if link:
                    os.link(s_name, d_name, src_dir_fd=sfd, dst_dir_fd=dfd)
                else:
                    os.rename(s_name, d_name, src_dir_fd=sfd, dst_dir_fd=dfd)
                self._sync_dir(d_dir, dfd, policy)
                if not link and s_dir != d_dir and policy is FsyncPolicy.ALWAYS:
                    self.dirsync.sync(s_dir, sfd)
            finally:
                os.close(dfd)
        finally:
            os.close(sfd)

    def rename(self, src: str, dst: str, policy: FsyncPolicy) -> asyncio.Future[None]:
        return self.pool.submit(self._rename, src, dst, policy, False)

    def link(self, src: str, dst: str, policy: FsyncPolicy) -> asyncio.Future[None]:
        return self.pool.submit(self._rename, src, dst, policy, True)

    def _mkdir(self, path: str, perms: Perms) -> None:
        os.close(self.beneath.makedirs("mkdir", path, perms))

    def mkdir(self, path: str, perms: Perms) -> asyncio.Future[None]:
        return self.pool.submit(self._mkdir, path, perms)

    def _rmdir(self, path: str) -> None:
        directory, name = paths.split(path)
        dfd = self.beneath.open_dir("rmdir", directory)
        try:
            os.rmdir(name, dir_fd=dfd)
        finally:
            os.close(dfd)

    def rmdir(self, path: str) -> asyncio.Future[None]:
        return self.pool.submit(self._rmdir, path)

    def _listdir(self, path: str, dirs: bool) -> list[str]:
        try:
            dfd = self.beneath.open_dir("iterate", path)
        except (FileNotFoundError, NotADirectoryError):
            return []
        out: list[str] = []
        try:
            with os.scandir(dfd) as it:
                for entry in it:
                    if entry.name.startswith(paths.TEMP_PREFIX):
                        continue
                    if entry.is_dir(follow_symlinks=False) == dirs:
                        out.append(entry.name)
        finally:
            os.close(dfd)
        return out

    def listdir(self, path: str, dirs: bool) -> asyncio.Future[list[str]]:
        return self.pool.submit(self._listdir, path, dirs)

    def _clean_temp(self, path: str, older_than: float) -> list[str]:
        try:
            dfd = self.beneath.open_dir("clean_temp", path)
        except FileNotFoundError:
            return []
        removed: list[str] = []
        now = time.time()
        try:
            with os.scandir(dfd) as it:
                entries = list(it)
            for entry in entries:
                if paths.temp_owner_pid(entry.name) is None:
                    continue
                try:
                    age = now - entry.stat(follow_symlinks=False).st_mtime
                except FileNotFoundError:
                    continue
                if not paths.stale_temp(entry.name, age, older_than):
                    continue
                try:
                    os.unlink(entry.name, dir_fd=dfd)
                except FileNotFoundError:
                    continue
                removed.append(entry.name)
        finally:
            os.close(dfd)
        return removed

    def clean_temp(self, path: str, older_than: float) -> asyncio.Future[list[str]]:
        return self.pool.submit(self._clean_temp, path, older_than)

    def stats(self) -> dict[str, Any]:
        return {
            "pool": self.pool.stats(),
            "dir_fsyncs": self.dirsync.fsyncs,
            "dir_fsync_requests": self.dirsync.requests,
        }

    async def aclose(self) -> None:
        if not self.pool.closed:
            await self.pool.submit(self.beneath.close)
        self.pool.shutdown()


def posix_fs(
    root: str, *, io_threads: int = 10, use_openat2: bool = True, **options: Any
) -> LocalFS:
    """The ``posix`` backend rooted at ``root`` (see :class:`LocalFS` for ``options``)."""
    return LocalFS(ThreadEngine(root, io_threads, use_openat2=use_openat2), **options)
