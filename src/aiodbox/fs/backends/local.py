"""Local files behind the non-blocking handle contract, over a pluggable I/O engine.

Theory of operation
-------------------
``LocalFS`` maps FS paths under a root directory to real files.  All blocking work is
done by an :class:`Engine` whose methods return futures: the worker-thread engine
(``posix``) runs each *whole* operation as one job; the io_uring engine (``uring``) turns
them into ring submissions.  The handle logic below is shared by both.

Reading.  ``open`` starts one engine job that opens, stats and, for a small read-only
file, reads it whole and closes it again (one round trip for the common sdbox case).
``pread`` serves from that data or a few cached chunks; otherwise it tries a
non-blocking page-cache read on the loop thread (``preadv(RWF_NOWAIT)``, or, for an
engine with ``reads_now``, its own :meth:`Engine.read_now`: io_uring submits the read at
once and returns the bytes if the kernel served them inside that call), at most
``inline_reads_per_tick`` per loop iteration so a run of cached reads cannot starve other
clients, and only on ``EAGAIN`` hands a read-ahead-sized read to the engine.  An engine
read's result waits for its reader by offset (``_ready``), so readers sharing a handle do
not evict each other's data from the small chunk cache before they come back; a read at
end of file reports ``b""`` once (``_eof_at``).

Writing.  Writes go to a bounded in-memory buffer (``write_buffer_size``).  Past half of
it, the buffer is flushed in the background to a *sink*: for a created file its temp file
(named ``.aiodbox-tmp.<pid>.<random>.<name>`` in the target directory); for a file opened
in ``APPEND`` mode an anonymous spill file (``O_TMPFILE``), so the real file never holds
uncommitted bytes.  Write-side jobs of one handle run strictly in order (a chain), and the
chain starts only after the open finished.

Committing.  A created file: write the rest, fsync (per policy), ``link`` (fail-if-exists)
or ``rename`` (replace) the temp file to its final name, fsync the directory: one engine
job.  Afterwards the handle behaves as if opened with ``APPEND``.  An append commit
copies the spill file and the buffer to the end of the file and fsyncs; the caller holds
``try_lock`` (mdbox), so nobody else appends meanwhile.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import contextlib
import errno
import fcntl
import logging
import os
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiodbox.fs import paths
from aiodbox.fs.api import (
    FS,
    CreateMode,
    FileHandle,
    FsProperty,
    FsStat,
    FsyncPolicy,
    OpenMode,
    Perms,
    StagedFile,
)
from aiodbox.fs.errors import FsClosed, FsError, FsNotFound, FsNotSupported, fs_error

_normalize_path = paths.normalize  # (``paths`` is also a parameter name below)
log = logging.getLogger(__name__)

DEFAULT_READAHEAD = 64 * 1024
DEFAULT_SMALL_FILE = 128 * 1024
DEFAULT_WRITE_BUFFER = 256 * 1024
DEFAULT_INLINE_READS_PER_TICK = 256
INLINE_READ_MAX = 1 << 20
"""Largest read done on the loop thread (a memcpy from the page cache)."""
_READ_CACHE_CHUNKS = 4
_MAX_READY = 1024
"""Engine reads whose reader has not come back yet, kept per handle at most."""


@dataclass(frozen=True, slots=True)
class OpenedFile:
    """What an engine's open job returns.

    Attributes:
        fd: an open descriptor, or None when the file was read whole and closed.
        size: the file size at open time.
        data: the whole file when it was small enough to read at once.
    """

    fd: int | None
    size: int
    data: bytes | None


class Engine(abc.ABC):
    """Blocking file work for :class:`LocalFS`, each method one background job.

    Paths are FS-relative and already normalized; the engine resolves them under its
    root and refuses symlinks that lead outside it (``FsPermission``).  Errors are
    ``OSError``s; the caller turns them into ``FsError``s.
    """

    name = "engine"
    nowait_reads = True
    """The loop thread may try ``preadv(RWF_NOWAIT)`` on descriptors from this engine."""
    reads_now = False
    """:meth:`read_now` may answer at once (used instead of ``RWF_NOWAIT`` reads)."""
    nowait_opens = False
    """:meth:`read_small_now` may answer at once."""

    @abc.abstractmethod
    def open_read(self, path: str, small_limit: int) -> asyncio.Future[OpenedFile]:
        """Open for reading; read it whole (and close it) if ``size <= small_limit``."""

    def read_small_now(self, path: str, limit: int) -> bytes | None:
        """Read the whole file ``path`` on the calling thread (the event loop) if that
        needs no I/O at all: its path and its data are cached by the kernel.

        Returns:
            The bytes, or None if the file is larger than ``limit``.

        Raises:
            BlockingIOError: not possible without waiting (or without certainty): use
                :meth:`read_small`, which also reports errors.
        """
        raise BlockingIOError(errno.EAGAIN, "no immediate opens")

    def read_small(
        self, paths: list[str], limit: int
    ) -> asyncio.Future[list[bytes | BaseException | None]]:
        """Read whole files of at most ``limit`` bytes: per path its bytes, None when it
        is larger, or the exception (``OSError``) reading it raised.  Nothing stays open.

        This default runs one :meth:`open_read` per path; engines may batch them.
        """
        return asyncio.ensure_future(self._read_small_each(paths, limit))

    async def _read_small_each(
        self, paths: list[str], limit: int
    ) -> list[bytes | BaseException | None]:
        opened = await asyncio.gather(
            *(self.open_read(p, limit) for p in paths), return_exceptions=True
        )
        out: list[bytes | BaseException | None] = []
        for res in opened:
            if isinstance(res, BaseException):
                out.append(res)
            elif res.fd is not None or res.data is None:
                if res.fd is not None:
                    self.close([res.fd])
                out.append(None)
            else:
                out.append(res.data if len(res.data) <= limit else None)
        return out

    @abc.abstractmethod
    def open_append(self, path: str) -> asyncio.Future[OpenedFile]:
        """Open an existing file for reading and appending (``data`` is None)."""

    @abc.abstractmethod
    def create_temp(self, directory: str, temp_name: str, perms: Perms) -> asyncio.Future[int]:
        """Create (with missing parents) and open the temp file; return its descriptor."""

    @abc.abstractmethod
    def create_spill(self, directory: str) -> asyncio.Future[int]:
        """Open an anonymous temp file in ``directory`` for an append handle's overflow."""

    @abc.abstractmethod
    def pread(self, fd: int, size: int, offset: int) -> asyncio.Future[bytes]:
        """Read up to ``size`` bytes at ``offset``."""

    def read_now(self, fd: int, size: int, offset: int) -> bytes | asyncio.Future[bytes]:
        """Return the bytes at once if the engine can get them without blocking (the page
        cache), else start the read and return its future (like :meth:`pread`)."""
        return self.pread(fd, size, offset)

    @abc.abstractmethod
    def pwrite(self, fd: int, chunks: list[bytes], offset: int) -> asyncio.Future[None]:
        """Write all ``chunks`` contiguously at ``offset``."""

    @abc.abstractmethod
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
        """Write ``chunks`` at ``offset``, fsync, link/rename temp → final, fsync dir."""

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
        """Create ``directory/final_name`` holding ``data``, durable per ``policy``, as
        :meth:`create_temp` + :meth:`commit_created` + :meth:`close` would (an engine
        may do it in one job); nothing is left behind if it fails."""

        async def run() -> None:
            fd = await self.create_temp(directory, temp_name, perms)
            try:
                await self.commit_created(
                    fd, directory, temp_name, final_name, replace, [data], 0, policy
                )
            except BaseException:
                await self.close([fd])
                with contextlib.suppress(OSError):  # (gone already if the link was made)
                    await self.close([], (directory, temp_name))
                raise
            await self.close([fd])

        return asyncio.ensure_future(run())

    stages = False
    """The engine can stage files (:meth:`write_temp` and the blocking ``*_now`` naming
    calls below), so :meth:`LocalFS.stage_file` offers it."""

    def write_temp(
        self, directory: str, temp_name: str, data: bytes, perms: Perms, policy: FsyncPolicy
    ) -> asyncio.Future[None]:
        """Create ``directory/temp_name`` (and missing parents) holding ``data``, durable
        per ``policy``, and close it; nothing is left behind if it fails."""
        raise NotImplementedError

    def name_now(self, directory: str, temp_name: str, final_name: str) -> None:
        """Blocking, on the calling (worker) thread: hard-link ``temp_name`` to
        ``final_name`` (``FileExistsError`` if taken), then remove ``temp_name``."""
        raise NotImplementedError

    def unlink_now(self, directory: str, name: str) -> None:
        """Blocking, on the calling (worker) thread: remove ``directory/name``."""
        raise NotImplementedError

    def sync_dir_now(self, directory: str, policy: FsyncPolicy) -> None:
        """Blocking, on the calling (worker) thread: fsync ``directory`` per ``policy``
        (shared with concurrent requests, as commits share theirs)."""
        raise NotImplementedError

    @abc.abstractmethod
    def commit_append(
        self,
        fd: int,
        spill_fd: int | None,
        spill_len: int,
        chunks: list[bytes],
        policy: FsyncPolicy,
    ) -> asyncio.Future[int]:
        """Append the spill file's first ``spill_len`` bytes and ``chunks``; return size."""

    @abc.abstractmethod
    def truncate(self, fd: int, length: int) -> asyncio.Future[None]:
        """Truncate ``fd`` to ``length``."""

    @abc.abstractmethod
    def close(self, fds: list[int], unlink: tuple[str, str] | None = None) -> asyncio.Future[None]:
        """Close ``fds``; then unlink ``directory/name`` if ``unlink`` is given."""

    @abc.abstractmethod
    def stat(self, path: str) -> asyncio.Future[FsStat]:
        """Stat a path."""

    @abc.abstractmethod
    def unlink(self, path: str, policy: FsyncPolicy) -> asyncio.Future[None]:
        """Remove a file."""

    @abc.abstractmethod
    def rename(self, src: str, dst: str, policy: FsyncPolicy) -> asyncio.Future[None]:
        """Rename atomically, creating ``dst``'s missing parents."""

    @abc.abstractmethod
    def link(self, src: str, dst: str, policy: FsyncPolicy) -> asyncio.Future[None]:
        """Hard-link ``src`` to ``dst``, creating ``dst``'s missing parents."""

    @abc.abstractmethod
    def mkdir(self, path: str, perms: Perms) -> asyncio.Future[None]:
        """Create a directory and its parents; no error if it exists."""

    @abc.abstractmethod
    def rmdir(self, path: str) -> asyncio.Future[None]:
        """Remove an empty directory."""

    @abc.abstractmethod
    def listdir(self, path: str, dirs: bool) -> asyncio.Future[list[str]]:
        """Names of the files (or directories) in ``path``; temp files excluded."""

    @abc.abstractmethod
    def clean_temp(self, path: str, older_than: float) -> asyncio.Future[list[str]]:
        """Remove stale temp files in ``path``; return their names."""

    def stats(self) -> dict[str, Any]:
        """Engine counters (queue depth, busy workers ...)."""
        return {}

    async def aclose(self) -> None:
        """Release threads or rings."""
        return


class _InlineBudget:
    """How much inline (page-cache) reading the loop may do before yielding.

    At most ``limit`` reads or ``byte_limit`` bytes per loop iteration; then ``pread``
    says EAGAIN and the reader comes back on the next iteration, after other callbacks.
    """

    __slots__ = ("armed", "byte_limit", "bytes", "limit", "used")

    def __init__(self, limit: int, byte_limit: int = 4 << 20) -> None:
        self.limit = limit
        self.byte_limit = byte_limit
        self.used = 0
        self.bytes = 0
        self.armed = False

    def take(self, nbytes: int) -> bool:
        if not self.armed:
            asyncio.get_running_loop().call_soon(self._reset)
            self.armed = True
        if self.used >= self.limit or self.bytes >= self.byte_limit:
            return False
        self.used += 1
        self.bytes += nbytes
        return True

    def _reset(self) -> None:
        self.used = 0
        self.bytes = 0
        self.armed = False


class LocalHandle(FileHandle):
    """A handle on a local file; see the module docstring for how it works."""

    def __init__(self, fs: LocalFS, path: str, kind: str, create_mode: CreateMode | None) -> None:
        super().__init__(path)
        self._fs = fs
        self._engine = fs.engine
        self._kind = kind  # "read", "append", "create"
        self._create_mode = create_mode
        self._directory, self._name = paths.split(path)
        self._temp_name = ""
        self._opened = False
        self._open_error: FsError | None = None
        self._closed = False
        self._fd: int | None = None
        self._size = 0
        self._whole: bytes | None = None
        self._committed_once = kind != "create"
        self._cache: collections.deque[tuple[int, bytes]] = collections.deque(
            maxlen=_READ_CACHE_CHUNKS
        )
        self._reads_inflight: dict[int, int] = {}
        self._next_sequential = 0
        self._wake_scheduled = False
        self._read_errors: dict[int, FsError] = {}
        self._eof_at: set[int] = set()  # engine reads that found end of file, to report once
        # Engine read results for the offset that asked, until that reader comes back: with
        # many readers on one handle the small chunk cache turns over before they return.
        self._ready: dict[int, bytes] = {}
        self._wbuf: list[bytes] = []
        self._wbuf_len = 0
        self._sink_fd: int | None = None
        self._sink_len = 0
        self._generation = 0
        self._flush_queued = False
        self._write_error: FsError | None = None
        self._commit_state: tuple[str, str | None, FsError | None] | None = None
        self._chain: collections.deque[Callable[[], asyncio.Future[Any] | None]] = (
            collections.deque()
        )
        self._chain_busy = False
        self._chain_idle: asyncio.Future[None] | None = None
        self._locked = False

    # ------------------------------------------------------------------ open

    def _start_open(self, perms: Perms | None) -> None:
        eng = self._engine
        fut: asyncio.Future[Any]
        if self._kind == "read":
            fut = eng.open_read(self.path, self._fs.small_file_size)
        elif self._kind == "append":
            fut = eng.open_append(self.path)
        else:
            self._temp_name = paths.temp_name(self._name, os.getpid())
            fut = eng.create_temp(self._directory, self._temp_name, perms or self._fs.perms)
        fut.add_done_callback(self._on_open)

    def _on_open(self, fut: asyncio.Future[Any]) -> None:
        self._opened = True
        exc = fut.exception()
        if exc is not None:
            self._open_error = _as_fs_error("open", self.path, exc)
        else:
            res = fut.result()
            if isinstance(res, OpenedFile):
                self._fd, self._size, self._whole = res.fd, res.size, res.data
            else:
                self._fd = res
                self._sink_fd = res
            if self._closed:  # closed while opening: the close job in the chain cleans up
                pass
        self._notify_open()
        self._run_chain()

    @property
    def opened(self) -> bool:
        return self._opened

    @property
    def open_error(self) -> FsError | None:
        return self._open_error

    def _check_usable(self, op: str) -> None:
        if self._closed:
            raise FsClosed(op, self.path, errno.EBADF, "handle is closed")
        if self._open_error is not None:
            raise self._open_error

    # ------------------------------------------------------------------ read

    def pread(self, size: int, offset: int) -> bytes:
        res = self._pread_or_start(size, offset)
        if isinstance(res, bytes):
            return res
        raise BlockingIOError(errno.EAGAIN, "read started")

    def _pread_or_start(self, size: int, offset: int) -> bytes | asyncio.Future[bytes]:
        """Bytes at once, or the future of the engine read this call started (its
        result reaches ``_ready`` or ``_read_errors`` first, see ``_on_read``); raises
        ``BlockingIOError`` when the caller must wait for input notifications."""
        self._check_usable("pread")
        if size < 0 or offset < 0:
            raise ValueError("size and offset must be >= 0")
        err = self._read_errors.pop(offset, None)
        if err is not None:
            raise err
        if not self._opened:
            raise BlockingIOError(errno.EAGAIN, "open in progress")
        if self._whole is not None:
            return self._whole[offset : offset + size]
        if not self._committed_once or size == 0:
            return b""
        if offset in self._eof_at:
            self._eof_at.discard(offset)
            return b""
        ready = self._ready.pop(offset, None)
        if ready is not None:
            return ready[:size]
        for start, data in self._cache:
            if start <= offset < start + len(data):
                return data[offset - start : offset - start + size]
        fd = self._fd
        assert fd is not None
        fs = self._fs
        inflight = self._reads_inflight
        if offset in inflight or (
            len(inflight) <= 8 and any(o <= offset < o + n for o, n in inflight.items())
        ):
            raise BlockingIOError(errno.EAGAIN, "read in progress")
        eng = self._engine
        if fs.nowait_reads and eng.reads_now and fs.inline_worth_trying():
            # The engine's own immediate read (io_uring: submit now, reap what the kernel
            # served from the page cache); a miss is already the background read.
            size = min(size, INLINE_READ_MAX)
            if not fs.inline_budget.take(size):
                self._wake_next_tick()
                raise BlockingIOError(errno.EAGAIN, "yielding to the event loop")
            try:
                res = eng.read_now(fd, size, offset)
            except OSError as e:
                raise _as_fs_error("pread", self.path, e) from e
            if isinstance(res, bytes):
                fs.inline_result(True)
                self._next_sequential = offset + len(res)
                return res
            fs.inline_result(False)
            self._next_sequential = offset + size
            self._reads_inflight[offset] = size
            fs.engine_reads += 1
            res.add_done_callback(lambda f: self._on_read(offset, f))
            return res
        if fs.nowait_reads and eng.nowait_reads and fs.inline_worth_trying():
            size = min(size, INLINE_READ_MAX)
            if fs.inline_budget.take(size):
                buf = bytearray(size)
                try:
                    n = os.preadv(fd, [buf], offset, os.RWF_NOWAIT)
                except BlockingIOError:
                    fs.inline_result(False)
                except OSError as e:
                    raise _as_fs_error("pread", self.path, e) from e
                else:
                    fs.inline_result(True)
                    self._next_sequential = offset + n
                    return bytes(buf) if n == size else bytes(buf[:n])
            else:
                # Budget used up in this loop iteration: come back on the next one.
                self._wake_next_tick()
                raise BlockingIOError(errno.EAGAIN, "yielding to the event loop")
        # Read ahead only for sequential access; random reads fetch what was asked.
        length = max(size, fs.readahead) if offset == self._next_sequential else size
        self._next_sequential = offset + length
        self._reads_inflight[offset] = length
        fs.engine_reads += 1
        fut = self._engine.pread(fd, length, offset)
        fut.add_done_callback(lambda f: self._on_read(offset, f))
        return fut

    def _wake_next_tick(self) -> None:
        if not self._wake_scheduled:
            self._wake_scheduled = True
            asyncio.get_running_loop().call_soon(self._wake_all_readers)

    def _wake_all_readers(self) -> None:
        self._wake_scheduled = False
        self._notify_input()

    def _on_read(self, offset: int, fut: asyncio.Future[bytes]) -> None:
        self._reads_inflight.pop(offset, None)
        if fut.cancelled():  # its reader gave up: others waiting there start their own
            self._notify_input(offset, offset + 1)
            return
        exc = fut.exception()
        end = offset + 1
        if exc is not None:
            self._read_errors[offset] = _as_fs_error("pread", self.path, exc)
        else:
            data = fut.result()
            if data:
                self._cache.append((offset, data))
                ready = self._ready
                if len(ready) >= _MAX_READY:
                    del ready[next(iter(ready))]
                ready[offset] = data
            else:  # an empty chunk would never match a lookup: report EOF once instead
                self._eof_at.add(offset)
            end = offset + max(len(data), 1)
        self._notify_input(offset, end)

    def fileno(self) -> int | None:
        if self._closed or not self._committed_once:
            return None
        return self._fd

    @property
    def size(self) -> int | None:
        if not self._opened or self._open_error is not None:
            return None
        return self._size

    # ----------------------------------------------------------------- write

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._check_usable("write")
        if self._kind == "read":
            raise FsError("write", self.path, errno.EBADF, "opened read-only")
        if self._write_error is not None:
            raise self._write_error
        room = self._fs.write_buffer_size - self._wbuf_len
        if room <= 0:
            raise BlockingIOError(errno.EAGAIN, "write buffer full")
        n = min(len(data), room)
        if n:
            self._wbuf.append(bytes(data[:n]))
            self._wbuf_len += n
        if self._wbuf_len >= self._fs.write_buffer_size // 2 and not self._flush_queued:
            self._flush_queued = True
            self._enqueue(self._flush_job)
        return n

    def _take_buffer(self) -> list[bytes]:
        chunks, self._wbuf, self._wbuf_len = self._wbuf, [], 0
        return chunks

    def _flush_job(self) -> asyncio.Future[Any] | None:
        self._flush_queued = False
        if not self._wbuf or self._write_error is not None:
            return None
        gen = self._generation
        if self._sink_fd is None:  # append handle: the spill file is made on first need
            fut = self._engine.create_spill(self._directory)

            def after_spill(f: asyncio.Future[int]) -> asyncio.Future[Any] | None:
                self._sink_fd = f.result()
                return self._write_to_sink(gen)

            out = _then(fut, after_spill)
            out.add_done_callback(self._record_flush_error)
            return out
        return self._write_to_sink(gen)

    def _record_flush_error(self, f: asyncio.Future[Any]) -> None:
        exc = f.exception()
        if exc is not None:
            self._write_error = self._write_error or _as_fs_error("write", self.path, exc)
            self._notify_output()

    def _write_to_sink(self, gen: int) -> asyncio.Future[Any] | None:
        chunks = self._take_buffer()
        if not chunks:
            return None
        n = sum(len(c) for c in chunks)
        assert self._sink_fd is not None
        fut = self._engine.pwrite(self._sink_fd, chunks, self._sink_len)

        def done(f: asyncio.Future[None]) -> None:
            exc = f.exception()
            if exc is not None:  # the taken bytes are gone: the next commit must fail
                self._write_error = self._write_error or _as_fs_error("write", self.path, exc)
            elif gen == self._generation:
                self._sink_len += n
            self._notify_output()

        fut.add_done_callback(done)
        return fut

    # ---------------------------------------------------------------- commit

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
        self._check_usable("commit")
        if self._kind == "read":
            raise FsError("commit", self.path, errno.EBADF, "opened read-only")
        if filename is not None:
            if self._committed_once:
                raise FsError("commit", self.path, errno.EINVAL, "file name given after creation")
            paths.check_filename("commit", self.path, filename)
        if self._write_error is not None:
            raise self._write_error
        self._commit_state = ("running", filename, None)
        self._enqueue(lambda: self._commit_job(filename))
        raise BlockingIOError(errno.EAGAIN, "commit started")

    def _commit_job(self, filename: str | None) -> asyncio.Future[Any] | None:
        policy = self._fs.fsync
        fut: asyncio.Future[Any]
        if self._open_error is not None or self._write_error is not None:
            self._finish_commit(filename, self._open_error or self._write_error)
            return None
        chunks = self._take_buffer()
        assert self._fd is not None
        if not self._committed_once:
            final = filename or self._name
            fut = self._engine.commit_created(
                self._fd,
                self._directory,
                self._temp_name,
                final,
                self._create_mode is CreateMode.REPLACE_IF_EXISTS,
                chunks,
                self._sink_len,
                policy,
            )
            size = self._sink_len + sum(len(c) for c in chunks)

            def created(f: asyncio.Future[None]) -> None:
                err = f.exception()
                if err is None:
                    self._committed_once = True
                    self._sink_fd = None
                    self._sink_len = 0
                    self._size = size
                    self._name = final
                    self.path = paths.join(self._directory, final)
                else:  # nothing visible; the written bytes stay for a retry or rollback
                    self._wbuf[:0] = chunks
                    self._wbuf_len += sum(len(c) for c in chunks)
                self._finish_commit(filename, err)

            fut.add_done_callback(created)
            return fut
        fut = self._engine.commit_append(self._fd, self._sink_fd, self._sink_len, chunks, policy)

        def appended(f: asyncio.Future[int]) -> None:
            err = f.exception()
            if err is None:
                self._size = f.result()
                self._sink_len = 0
            else:
                self._wbuf[:0] = chunks
                self._wbuf_len += sum(len(c) for c in chunks)
            self._finish_commit(filename, err)

        fut.add_done_callback(appended)
        return fut

    def _finish_commit(self, filename: str | None, err: BaseException | None) -> None:
        fs_err = None if err is None else _as_fs_error("commit", self.path, err)
        self._commit_state = ("done", filename, fs_err)
        self._fs.commits += 1
        self._notify_output()

    def rollback(self) -> None:
        if self._commit_state is not None and self._commit_state[0] == "running":
            raise FsError("rollback", self.path, errno.EBUSY, "commit in progress")
        self._commit_state = None
        self._take_buffer()
        self._write_error = None
        self._generation += 1
        if self._sink_len and self._sink_fd is not None:
            sink = self._sink_fd
            self._sink_len = 0
            self._enqueue(lambda: self._truncate_job(sink))

    def _truncate_job(self, sink: int) -> asyncio.Future[Any]:
        fut = self._engine.truncate(sink, 0)

        def done(f: asyncio.Future[None]) -> None:
            exc = f.exception()
            if exc is not None:
                self._write_error = _as_fs_error("rollback", self.path, exc)

        fut.add_done_callback(done)
        return fut

    # ---------------------------------------------------------------- chain

    def _enqueue(self, job: Callable[[], asyncio.Future[Any] | None]) -> None:
        self._chain.append(job)
        self._run_chain()

    def _run_chain(self) -> None:
        if not self._opened:
            return
        while not self._chain_busy and self._chain:
            job = self._chain.popleft()
            try:
                fut = job()
            except BaseException as e:  # a bug in a job must not wedge the chain
                self._write_error = _as_fs_error("write", self.path, e)
                continue
            if fut is None:
                continue
            self._chain_busy = True
            fut.add_done_callback(self._chain_step)
        if not self._chain_busy and not self._chain and self._chain_idle is not None:
            if not self._chain_idle.done():
                self._chain_idle.set_result(None)
            self._chain_idle = None

    def _chain_step(self, fut: asyncio.Future[Any]) -> None:
        # Each job's own done-callback records its outcome; the chain only moves on.
        self._chain_busy = False
        if not fut.cancelled():
            fut.exception()  # retrieved, so asyncio does not log it as never retrieved
        self._run_chain()

    # ----------------------------------------------------------------- close

    def try_lock(self) -> bool:
        self._check_usable("try_lock")
        if not self._opened:
            raise BlockingIOError(errno.EAGAIN, "open in progress")
        if FsProperty.LOCKS not in self._fs.properties:
            raise FsNotSupported("try_lock", self.path, errno.ENOTSUP)
        if self._locked:
            return True
        fd = self._fd
        if fd is None:  # a small read-only file that was read whole: reopen to lock
            raise FsError("try_lock", self.path, errno.EBADF, "open in APPEND mode to lock")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError as e:
            raise _as_fs_error("try_lock", self.path, e) from e
        self._locked = True
        return True

    def unlock(self) -> None:
        if self._locked and self._fd is not None and not self._closed:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._locked = False

    def size_under_lock(self) -> int | None:
        # fstat of an open descriptor reads the in-memory inode: no disk I/O, so the loop
        # may do it (as it does a page-cache pread).
        fd = self._fd
        if not self._locked or fd is None or self._closed:
            return None
        try:
            st = os.fstat(fd)
        except OSError:
            return None
        if st.st_nlink == 0:
            raise FsNotFound("stat", self.path, errno.ENOENT, "deleted since it was opened")
        return st.st_size

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._take_buffer()
        self._generation += 1
        self._enqueue(self._close_job)

    def _close_job(self) -> asyncio.Future[Any] | None:
        fds = [fd for fd in {self._fd, self._sink_fd} if fd is not None]
        self._fd = self._sink_fd = None
        unlink = None
        if not self._committed_once and self._temp_name and self._open_error is None:
            unlink = (self._directory, self._temp_name)
        if not fds and unlink is None:
            return None
        return self._engine.close(fds, unlink)

    async def aclose(self) -> None:
        self.close()
        if self._chain_busy or self._chain or not self._opened:
            loop = asyncio.get_running_loop()
            if self._chain_idle is None:
                self._chain_idle = loop.create_future()
            await asyncio.shield(self._chain_idle)


def _then(
    fut: asyncio.Future[Any], step: Callable[[asyncio.Future[Any]], asyncio.Future[Any] | None]
) -> asyncio.Future[Any]:
    """A future for ``step(fut)``'s future, once ``fut`` finished (errors propagate)."""
    out: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def relay(f: asyncio.Future[Any]) -> None:
        if out.done():
            return
        exc = f.exception()
        if exc is not None:
            out.set_exception(exc)
        else:
            out.set_result(f.result())

    def first(f: asyncio.Future[Any]) -> None:
        if f.exception() is not None:
            relay(f)
            return
        try:
            nxt = step(f)
        except BaseException as e:
            out.set_exception(e)
            return
        if nxt is None:
            out.set_result(None)
        else:
            nxt.add_done_callback(relay)

    fut.add_done_callback(first)
    return out


def _as_fs_error(op: str, path: str, exc: BaseException) -> FsError:
    if isinstance(exc, FsError):
        return exc
    if isinstance(exc, OSError):
        return fs_error(op, path, exc)
    return FsError(op, path, errno.EIO, f"{type(exc).__name__}: {exc}")


class _LocalStaged(StagedFile):
    """A staged file of :class:`LocalFS`: written, fsynced and closed under its temp name
    by one engine job; named by a hard link (never replacing anything), the temp name
    removed after."""

    def __init__(self, fs: LocalFS, directory: str, temp_name: str, size: int) -> None:
        self.fs = fs
        self.directory = directory
        self.temp_name = temp_name
        self.size = size
        self.name: str | None = None
        self.discarded = False

    def _path(self, name: str) -> str:
        return f"{self.directory}/{name}" if self.directory else name

    def publish_blocking(self, name: str) -> None:
        try:
            self.fs.engine.name_now(self.directory, self.temp_name, name)
        except OSError as e:
            raise _as_fs_error("commit", self._path(name), e) from e
        self.name = name

    def unpublish_blocking(self, name: str) -> None:
        try:
            self.fs.engine.unlink_now(self.directory, name)
        except OSError as e:
            raise _as_fs_error("delete", self._path(name), e) from e
        if self.name == name:
            self.name = None
            self.discarded = True  # (its temp name went at publish)

    def sync_directory_blocking(self) -> None:
        try:
            self.fs.engine.sync_dir_now(self.directory, self.fs.fsync)
        except OSError as e:
            raise _as_fs_error("commit", self.directory or ".", e) from e

    async def discard(self) -> None:
        if self.name is not None or self.discarded:
            return
        self.discarded = True
        try:
            await self.fs.engine.close([], (self.directory, self.temp_name))
        except OSError as e:
            log.warning("cannot remove %s: %s", self._path(self.temp_name), e)


class LocalFS(FS):
    """Files under a root directory, with the I/O done by ``engine``."""

    properties = (
        FsProperty.LOCKS
        | FsProperty.APPEND
        | FsProperty.RENAME
        | FsProperty.LINK
        | FsProperty.ITER
        | FsProperty.FD
        | FsProperty.DIRECTORIES
        | FsProperty.PERSISTENT
    )

    def __init__(
        self,
        engine: Engine,
        *,
        fsync: FsyncPolicy | str = FsyncPolicy.OPTIMIZED,
        readahead: int = DEFAULT_READAHEAD,
        small_file_size: int = DEFAULT_SMALL_FILE,
        write_buffer_size: int = DEFAULT_WRITE_BUFFER,
        nowait_reads: bool = True,
        inline_reads_per_tick: int = DEFAULT_INLINE_READS_PER_TICK,
        perms: Perms | None = None,
    ) -> None:
        self.engine = engine
        self.name = engine.name
        self.fsync = FsyncPolicy(fsync)
        self.readahead = readahead
        self.small_file_size = small_file_size
        if write_buffer_size < 2:
            raise ValueError("write_buffer_size too small")
        self.write_buffer_size = write_buffer_size
        self.nowait_reads = nowait_reads and hasattr(os, "RWF_NOWAIT")
        self.inline_budget = _InlineBudget(inline_reads_per_tick)
        self._inline_hit_rate = 1.0
        self._inline_skipped = 0
        self.perms = perms or Perms()
        self.inline_hits = 0
        self.engine_reads = 0
        self.commits = 0

    def inline_worth_trying(self) -> bool:
        """Whether the next read should try the page cache inline.

        While recent inline attempts mostly missed (a cold cache), only every 8th read
        probes, so cold reads do not pay a failed system call each.
        """
        if self._inline_hit_rate >= 0.1:
            return True
        self._inline_skipped += 1
        return self._inline_skipped % 8 == 0

    def inline_result(self, hit: bool) -> None:
        """Record an inline attempt (an exponential moving average of the hit rate)."""
        self._inline_hit_rate += ((1.0 if hit else 0.0) - self._inline_hit_rate) / 16
        if hit:
            self.inline_hits += 1

    def _handle(
        self, op: str, path: str, kind: str, mode: CreateMode | None, perms: Perms | None
    ) -> LocalHandle:
        try:
            norm = paths.normalize(op, path)
        except FsError as e:
            h = LocalHandle(self, path, kind, mode)
            h._opened = True
            h._open_error = e
            return h
        h = LocalHandle(self, norm, kind, mode)
        h._start_open(perms)
        return h

    def open(self, path: str, mode: OpenMode = OpenMode.READONLY) -> FileHandle:
        kind = "append" if mode is OpenMode.APPEND else "read"
        return self._handle("open", path, kind, None, None)

    def create(
        self,
        path: str,
        mode: CreateMode = CreateMode.FAIL_IF_EXISTS,
        perms: Perms | None = None,
    ) -> FileHandle:
        return self._handle("create", path, "create", mode, perms)

    async def write_file(
        self,
        path: str,
        data: bytes,
        mode: CreateMode = CreateMode.REPLACE_IF_EXISTS,
        perms: Perms | None = None,
    ) -> None:
        """See :meth:`FS.write_file`: one engine job (posix: one hand-off for the create,
        write, fsync, link and directory fsync, where a handle takes three)."""
        norm = paths.normalize("create", path)
        directory, name = paths.split(norm)
        paths.check_filename("create", norm, name)
        fut = self.engine.write_whole(
            directory,
            paths.temp_name(name, os.getpid()),
            name,
            mode is CreateMode.REPLACE_IF_EXISTS,
            bytes(data),
            perms or self.perms,
            self.fsync,
        )
        await self._call("commit", path, fut)
        self.commits += 1

    async def stage_file(self, directory: str, data: bytes) -> StagedFile | None:
        """See :meth:`FS.stage_file`: one engine job (create, write, fsync, close) where
        the engine can stage."""
        if not self.engine.stages:
            return None
        norm = paths.normalize("create", directory, allow_root=True)
        temp_name = paths.temp_name("staged", os.getpid())
        path = f"{norm}/{temp_name}" if norm else temp_name
        fut = self.engine.write_temp(norm, temp_name, bytes(data), self.perms, self.fsync)
        await self._call("create", path, fut)
        return _LocalStaged(self, norm, temp_name, len(data))

    def read_small_file_now(self, path: str, limit: int) -> bytes | None:
        """See :meth:`FS.read_small_file_now`: served on the loop when the engine can
        (``openat2(RESOLVE_CACHED)`` + ``preadv(RWF_NOWAIT)``), within the inline budget."""
        try:
            norm = _normalize_path("open", path)
        except FsError:
            raise BlockingIOError(errno.EAGAIN, "left to read_small_files") from None
        return self._read_small_now(norm, limit)

    def _read_small_now(self, norm: str, limit: int) -> bytes | None:
        # Cached files are read on the loop (no I/O, as pread's RWF_NOWAIT reads): no
        # hand-off to a worker and back.  The inline budget still applies.
        eng = self.engine
        budget = self.inline_budget
        if not (
            self.nowait_reads
            and eng.nowait_opens
            and self.inline_worth_trying()
            and budget.take(0)  # one read now; its bytes are counted once known
        ):
            raise BlockingIOError(errno.EAGAIN, "no inline read now")
        try:
            data = eng.read_small_now(norm, limit)
        except BlockingIOError:
            self.inline_result(False)
            raise
        self.inline_result(True)
        if data is not None:
            budget.bytes += len(data)
        return data

    async def read_file(self, path: str) -> bytes:
        """See :meth:`FS.read_file`: a small file as :meth:`read_small_files` reads it (one
        engine job, or on the loop when cached), no handle; a larger one in parts."""
        (data,) = await self.read_small_files([path], self.small_file_size)
        if isinstance(data, FsError):
            raise data
        if data is not None:
            return data
        return await super().read_file(path)

    async def read_small_files(
        self, paths: Sequence[str], limit: int
    ) -> list[bytes | FsError | None]:
        """See :meth:`FS.read_small_files`: handed to the engine in one go (the posix
        engine reads the lot in one worker job), no handles."""
        out: list[bytes | FsError | None] = [None] * len(paths)
        todo: list[tuple[int, str]] = []
        for i, path in enumerate(paths):
            try:
                norm = _normalize_path("open", path)
            except FsError as e:
                out[i] = e
                continue
            try:
                out[i] = self._read_small_now(norm, limit)
                continue
            except BlockingIOError:
                todo.append((i, norm))
        if todo:
            try:
                results = await self.engine.read_small([norm for _, norm in todo], limit)
            except RuntimeError as e:  # the FS is closed: each read fails as an open would
                results = [e] * len(todo)
            for (i, _norm), res in zip(todo, results, strict=True):
                if isinstance(res, BaseException):
                    if not isinstance(res, (OSError, RuntimeError)):
                        raise res
                    out[i] = _as_fs_error("open", paths[i], res)
                else:
                    out[i] = res
        return out

    async def _call(self, op: str, path: str, fut: asyncio.Future[Any]) -> Any:
        try:
            return await fut
        except OSError as e:
            raise _as_fs_error(op, path, e) from e

    async def stat(self, path: str) -> FsStat:
        norm = paths.normalize("stat", path, allow_root=True)
        res: FsStat = await self._call("stat", path, self.engine.stat(norm))
        return res

    async def delete(self, path: str) -> None:
        norm = paths.normalize("delete", path)
        await self._call("delete", path, self.engine.unlink(norm, self.fsync))

    async def rename(self, src: str, dst: str) -> None:
        s, d = paths.normalize("rename", src), paths.normalize("rename", dst)
        await self._call("rename", src, self.engine.rename(s, d, self.fsync))

    async def link(self, src: str, dst: str) -> None:
        s, d = paths.normalize("link", src), paths.normalize("link", dst)
        await self._call("link", dst, self.engine.link(s, d, self.fsync))

    async def mkdir(self, path: str, perms: Perms | None = None) -> None:
        norm = paths.normalize("mkdir", path)
        await self._call("mkdir", path, self.engine.mkdir(norm, perms or self.perms))

    async def rmdir(self, path: str) -> None:
        norm = paths.normalize("rmdir", path)
        await self._call("rmdir", path, self.engine.rmdir(norm))

    async def iterate(self, prefix: str, *, dirs: bool = False) -> AsyncIterator[str]:
        norm = paths.normalize("iterate", prefix, allow_root=True)
        names: list[str] = await self._call("iterate", prefix, self.engine.listdir(norm, dirs))
        for name in names:
            yield paths.join(norm, name)

    async def clean_temp(self, prefix: str, older_than: float = 3600.0) -> list[str]:
        """Remove temp files in directory ``prefix`` left by dead processes or too old.

        Returns:
            The removed paths.
        """
        norm = paths.normalize("clean_temp", prefix, allow_root=True)
        names: list[str] = await self._call(
            "clean_temp", prefix, self.engine.clean_temp(norm, older_than)
        )
        return [paths.join(norm, n) for n in names]

    def stats(self) -> dict[str, Any]:
        return {
            self.name: {
                "inline_hits": self.inline_hits,
                "engine_reads": self.engine_reads,
                "commits": self.commits,
                **self.engine.stats(),
            }
        }

    async def aclose(self) -> None:
        await self.engine.aclose()
