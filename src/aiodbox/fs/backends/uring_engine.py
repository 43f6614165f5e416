"""An asyncio I/O engine over io_uring: file operations as coroutines, no threads of ours.

Theory of operation
-------------------
::

    task: await engine.read(fd, n, off)
      |  _acquire(1): take an in-flight slot, or wait FIFO (back-pressure)
      |  ring.prep_read(token=(op, 0), buffer)   SQE written, not yet visible
      |  call_soon(_flush) unless already scheduled for this loop iteration
      |  await op.fut
    _flush (once per loop iteration):  ring.submit() -> ONE io_uring_enter for every SQE
                                       queued since the last flush, then _reap() (cached
                                       reads and other inline completions are ready now)
    kernel: runs each op inline or on its io-wq workers, posts a CQE, signals the eventfd
    loop.add_reader(eventfd) -> _on_eventfd: drain the eventfd, then _reap()
    _reap: per CQE: in_flight -= 1; op.results[idx] = res; on the op's last CQE resolve
           op.fut (or clean up after a cancelled waiter); then wake slot waiters

* **No thread, no polling.**  Completions reach the loop through an eventfd registered
  with the ring and watched with :meth:`asyncio.loop.add_reader`.  The eventfd is drained
  *before* the CQ is read, so a completion posted after the read re-arms it.
* **Batching.**  Operations started in the same loop iteration share one
  ``io_uring_enter``; the flush then reaps what finished inline.  At most one batch of
  completions (``reap_batch``, 16) is handled per loop iteration: when more are ready,
  the next batch is scheduled with ``call_soon`` instead, so timers and other callbacks
  get their turn in between, and the number of tasks woken per iteration stays bounded.
* **Back-pressure.**  At most ``max_in_flight`` SQEs (default: the ring size) are
  outstanding, counting queued, submitted and completed-but-unreaped ones.  A caller that
  would exceed it waits in a FIFO queue for slots; it never gets an error.  A linked chain
  takes all its slots at once.  Because the bound is at most the SQ size, the SQ never
  overflows, and since the CQ is twice that size, neither does the CQ.
* **Buffers.**  Every buffer and path string is kept alive by the ring until the CQE of
  its operation is reaped (see :mod:`.uring_ring`), independently of the coroutine that
  started it.  Cancelling the awaiting coroutine abandons the *wait*, never the memory:
  the kernel may still write into a read buffer, and it stays allocated until then.
* **Cancellation does not undo.**  A started operation runs to completion in the kernel
  even if its waiter is cancelled (a rename may still happen).  Only a resource the
  operation created is cleaned up: if an ``openat`` completes after its waiter was
  cancelled (or the waiter is cancelled after the fd arrived but before it resumed), the
  engine closes that fd itself.
* **Linked chains.**  ``write_fsync_rename`` and ``open_read_close`` submit SQEs joined by
  ``IOSQE_IO_LINK``: each starts only after the previous one completed.  When a read,
  write, fsync, open or close fails, every later SQE of the chain completes with
  ``-ECANCELED`` and the first real error is reported.  A *short* read or write also
  breaks a link (the kernel counts it as a failure); the engine handles that case
  explicitly.  **Name operations do not break links**: a failed ``renameat``,
  ``linkat``, ``unlinkat``, ``mkdirat`` or ``statx`` does not mark the request failed
  (checked on Linux 6.18, see ``test_uring_ring``), so the next SQE runs anyway.  Never
  link anything destructive after a name operation (``linkat -> unlinkat`` would drop
  the temp file after a failed link); a directory fsync after a rename is harmless.
* **Two ways in.**  The coroutine methods (``read``, ``openat``, ...) suit callers that
  await; :meth:`UringEngine.start` queues an operation of any SQEs with a ``finish``
  callback and returns a plain future (no coroutine, no task), which is what the
  ``uring`` FS backend's hot paths use; ``finish`` runs when the last CQE is reaped and
  may hand the future on to a follow-up step (``DEFERRED``).  :meth:`UringEngine.read_now`
  submits a read at once and returns the bytes directly when the kernel served it from
  the page cache inside that ``io_uring_enter`` (else a future): a cached read without a
  loop iteration.
* **One engine per process and loop.**  The engine is bound to the loop that created it.
  After ``fork()`` the child must not use the parent's engine (the ring memory is shared
  with the parent): every method raises :class:`RuntimeError` there; create a new engine
  in the child.  ``aclose()`` in the child only drops the child's copies of the fds.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import stat
import struct
import warnings
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, TypeAlias, TypeVar

from aiodbox.fs.backends.uring_ring import (
    AT_EMPTY_PATH,
    AT_FDCWD,
    AT_REMOVEDIR,
    AT_SYMLINK_NOFOLLOW,
    FORCE_UNAVAILABLE_ENV,
    IORING_FEAT_LINKED_FILE,
    IOSQE_ASYNC,
    IOSQE_FIXED_FILE,
    IOSQE_IO_HARDLINK,
    IOSQE_IO_LINK,
    MAX_RW_COUNT,
    Op,
    Ring,
    StrayCompletionError,
    UringUnavailable,
    WriteData,
    probe,
)

__all__ = [
    "DEFERRED",
    "FORCE_UNAVAILABLE_ENV",
    "EngineStats",
    "Operation",
    "PathArg",
    "StatxResult",
    "UringEngine",
    "UringUnavailable",
    "parse_statx",
    "probe",
]

PathArg: TypeAlias = "str | bytes | os.PathLike[str] | os.PathLike[bytes]"

#: The longest linked chain the engine submits (write, fsync, rename, directory fsync).
_MAX_CHAIN: Final = 4
# struct statx up to stx_attributes_mask; stx_mtime (s64 sec, u32 nsec) is at 0x70.
_STATX_HEAD: Final = struct.Struct("=IIQIIIHHQQQQ")
_STATX_MTIME: Final = struct.Struct("=qI")
_STATX_MTIME_OFFSET: Final = 0x70

R = TypeVar("R")


class _Deferred:
    __slots__ = ()

    def __repr__(self) -> str:
        return "DEFERRED"


DEFERRED: Final[Any] = _Deferred()
"""What a :meth:`UringEngine.start` ``finish`` returns when it will resolve the future
itself later (it started a follow-up step); the engine then leaves the future alone."""

_fork_generation = 0


def _after_fork_in_child() -> None:
    global _fork_generation
    _fork_generation += 1


os.register_at_fork(after_in_child=_after_fork_in_child)

#: Keepalives of operations still in the kernel when their engine had to close anyway
#: (``aclose()`` cancelled, engine broken).  Never freed: the kernel may still write there.
_ABANDONED: list[object] = []


@dataclass(frozen=True, slots=True)
class StatxResult:
    """What :meth:`UringEngine.statx` and :meth:`UringEngine.fstat` report.

    Attributes:
        size: size in bytes.
        mtime: modification time, seconds since the epoch.
        mtime_ns: modification time in nanoseconds.
        mode: file type and permission bits (as ``os.stat_result.st_mode``).
        ino: inode number.
        nlink: number of hard links.
        is_dir: whether it is a directory.
    """

    size: int
    mtime: float
    mtime_ns: int
    mode: int
    ino: int
    nlink: int
    is_dir: bool


@dataclass(slots=True)
class EngineStats:
    """Counters, for tests and diagnostics.

    Attributes:
        sqes: submission entries prepared.
        submits: ``io_uring_enter`` calls that submitted something.
        completions: completions reaped.
        wakeups: eventfd wake-ups handled.
        orphan_fds_closed: fds opened for a cancelled waiter and closed by the engine.
    """

    sqes: int = 0
    submits: int = 0
    completions: int = 0
    wakeups: int = 0
    orphan_fds_closed: int = 0


class _Op:
    """One operation: a single SQE or a linked chain, resolved when all its CQEs are in.

    The SQE for step ``i`` of the operation carries the token ``(op, i)``.
    """

    __slots__ = ("finish", "fut", "on_done", "on_orphan", "remaining", "results")

    def __init__(self, fut: asyncio.Future[Any] | None, count: int) -> None:
        #: None only while :meth:`UringEngine.read_now` checks for an inline completion.
        self.fut = fut
        self.results = [0] * count
        self.remaining = count
        #: Called with the results when the last CQE arrives, waiter or not.
        self.on_done: Callable[[list[int]], None] | None = None
        #: Called with the results when the waiter is gone (cancelled) and cannot use them.
        self.on_orphan: Callable[[list[int]], None] | None = None
        #: Turns the results into the future's value (or raises its exception); None:
        #: the future gets the results list itself.
        self.finish: Callable[[list[int]], Any] | None = None


#: What :meth:`UringEngine.start`'s ``prep`` callback receives: the operation whose
#: step ``i`` is prepared with the token ``(op, i)``.
Operation: TypeAlias = _Op
_Token: TypeAlias = tuple[_Op, int]


class _BufferPool:
    """Read buffers for reuse.

    Allocating and zeroing a fresh buffer per read is a visible share of a small read's
    cost (about 3 us for 64 KiB).  A buffer is given back only after the operation that
    used it has completed and its data was copied out; one whose waiter was cancelled is
    never given back, and is freed once the ring drops it at its completion.
    """

    __slots__ = ("_free", "_held")
    MAX_BUFFER: Final = 256 * 1024 + 1
    MAX_HELD: Final = 4 * 1024 * 1024

    def __init__(self) -> None:
        self._free: dict[int, list[ctypes.Array[ctypes.c_char]]] = {}
        self._held = 0

    def take(self, size: int) -> ctypes.Array[ctypes.c_char]:
        free = self._free.get(size)
        if free:
            self._held -= size
            return free.pop()
        return (ctypes.c_char * size)()

    def result(self, buf: ctypes.Array[ctypes.c_char], res: int, filename: object = None) -> bytes:
        """The bytes a read into ``buf`` returned (``res``: its CQE result), and ``buf``
        back to the pool (the kernel is done with it once the read completed).

        Raises:
            OSError: ``res`` is an error.
        """
        try:
            if res < 0:
                raise _os_error(-res, filename)
            return ctypes.string_at(buf, res)
        finally:
            self.give(buf)

    def give(self, buf: ctypes.Array[ctypes.c_char]) -> None:
        size = len(buf)
        if size > self.MAX_BUFFER or self._held + size > self.MAX_HELD:
            return
        self._free.setdefault(size, []).append(buf)
        self._held += size


def _encode(path: PathArg) -> bytes:
    raw = os.fsencode(path)
    if b"\0" in raw:
        raise ValueError("embedded null byte")
    return raw


def _byte_view(data: WriteData) -> memoryview:
    view = memoryview(data)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def _os_error(err: int, filename: object = None, filename2: object = None) -> OSError:
    """Build the ``OSError`` subclass for ``err`` the way ``os`` functions do."""
    message = os.strerror(err)
    if filename is None:
        return OSError(err, message)
    if filename2 is None:
        return OSError(err, message, filename)
    return OSError(err, message, filename, None, filename2)


def parse_statx(buf: ctypes.Array[ctypes.c_char]) -> StatxResult:
    """Decode the ``struct statx`` the kernel wrote into ``buf``."""
    head = _STATX_HEAD.unpack_from(buf, 0)
    nlink, mode, ino, size = head[3], head[6], head[8], head[9]
    sec, nsec = _STATX_MTIME.unpack_from(buf, _STATX_MTIME_OFFSET)
    mtime_ns = sec * 1_000_000_000 + nsec
    return StatxResult(
        size=size,
        mtime=mtime_ns / 1e9,
        mtime_ns=mtime_ns,
        mode=mode,
        ino=ino,
        nlink=nlink,
        is_dir=stat.S_ISDIR(mode),
    )


class UringEngine:
    """File operations as coroutines over one io_uring, bound to the running loop.

    Create it inside a coroutine (``engine = UringEngine()``) and ``await
    engine.aclose()`` when done.  Every method must be called from that loop's thread.

    Paths may be ``str``, ``bytes`` or path-like; they are used as given (absolute paths
    expected; a relative one resolves against the process's working directory when the
    kernel runs the operation).  Errors are raised as :class:`OSError` subclasses with the
    errno and the filename(s), like the ``os`` functions.  An operation's effect is
    visible to other processes when its coroutine returns (for ``write``: in the page
    cache; durable only after ``fsync``).
    """

    def __init__(
        self,
        entries: int = 256,
        *,
        max_in_flight: int | None = None,
        direct_descriptors: bool = True,
        reap_batch: int = 16,
    ) -> None:
        """Set up the ring and hook its eventfd into the running loop.

        Args:
            entries: submission queue size (rounded up to a power of two by the kernel).
            max_in_flight: bound on outstanding SQEs (default and maximum: the SQ size;
                minimum 4, the longest chain).
            direct_descriptors: let ``open_read_close`` use direct descriptors when the
                kernel supports them (``False`` forces the two-submission path).
            reap_batch: completions handled per loop iteration.  A small batch keeps the
                number of tasks woken per iteration, and so timer lateness, low (even in
                asyncio debug mode, where each wake-up costs a fraction of a
                millisecond); a larger one saves a little CPU per operation.

        Raises:
            UringUnavailable: :func:`probe` says io_uring cannot be used here.
            RuntimeError: no running event loop.
            ValueError: ``entries``, ``max_in_flight`` or ``reap_batch`` out of range.
        """
        self._closed = True  # until fully constructed (see __del__)
        loop = asyncio.get_running_loop()
        reason = probe()
        if reason is not None:
            raise UringUnavailable(reason)
        if entries < _MAX_CHAIN:
            raise ValueError(f"entries must be at least {_MAX_CHAIN}")
        if reap_batch < 1:
            raise ValueError("reap_batch must be positive")
        ring: Ring[_Token] = Ring(entries)
        try:
            limit = ring.sq_entries if max_in_flight is None else max_in_flight
            if not _MAX_CHAIN <= limit <= ring.sq_entries:
                raise ValueError(
                    f"max_in_flight must be within {_MAX_CHAIN}..{ring.sq_entries}, not {limit}"
                )
            supported = ring.probe_opcodes()
            # Direct descriptors let open_read_close run as one chain (Linux >= 5.19).
            direct = (
                direct_descriptors
                and bool(ring.features & IORING_FEAT_LINKED_FILE)
                and ring.register_files_sparse(limit)
            )
            efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            try:
                ring.register_eventfd(efd)
                loop.add_reader(efd, self._on_eventfd)
            except BaseException:
                os.close(efd)
                raise
        except BaseException:
            ring.close()
            raise
        self._loop = loop
        self._ring = ring
        self._efd = efd
        self._limit = limit
        self._direct_slots: list[int] | None = list(range(limit)) if direct else None
        self.supported_ops: frozenset[int] = supported
        """The ``IORING_OP_*`` codes this kernel supports (optional ones vary)."""
        self._in_flight = 0
        self._peak = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._idle_waiters: list[asyncio.Future[None]] = []
        self._background: set[asyncio.Task[None]] = set()
        self._flush_handle: asyncio.Handle | None = None
        self._retry_handle: asyncio.TimerHandle | None = None
        self._reap_handle: asyncio.Handle | None = None
        self._broken: BaseException | None = None
        self._closing = False
        self._generation = _fork_generation
        # Future of internal operations nobody awaits (closing an orphaned fd).
        self._unawaited: asyncio.Future[list[int]] = loop.create_future()
        self._unawaited.set_result([])
        self._reap_batch = reap_batch
        self._reaped = 0  # completions delivered in this loop iteration
        self._buffers = _BufferPool()
        self.stats = EngineStats()
        self._closed = False

    # --- introspection -------------------------------------------------------------------

    @property
    def max_in_flight(self) -> int:
        """The bound on outstanding SQEs."""
        return self._limit

    @property
    def in_flight(self) -> int:
        """SQEs outstanding now (queued, submitted, or completed and not yet reaped)."""
        return self._in_flight

    @property
    def peak_in_flight(self) -> int:
        """The largest :attr:`in_flight` ever seen (never above :attr:`max_in_flight`)."""
        return self._peak

    @property
    def waiting(self) -> int:
        """Callers waiting for in-flight slots."""
        return len(self._waiters)

    @property
    def direct_descriptors(self) -> bool:
        """Whether ``open_read_close`` runs as one linked chain (direct descriptors)."""
        return self._direct_slots is not None

    def supports(self, op: Op) -> bool:
        """Whether the kernel supports the (optional) opcode ``op``."""
        return int(op) in self.supported_ops

    def take_buffer(self, size: int) -> ctypes.Array[ctypes.c_char]:
        """A read buffer of ``size`` bytes from the engine's pool (contents undefined)."""
        return self._buffers.take(size)

    def give_buffer(self, buf: ctypes.Array[ctypes.c_char]) -> None:
        """Return a buffer once no kernel operation uses it and its data was copied out."""
        self._buffers.give(buf)

    def take_slot(self) -> int | None:
        """A free direct-descriptor slot, or None (none free, or no direct descriptors).

        Give it back with :meth:`give_slot` once the operation that closes it completed.
        There are as many slots as in-flight SQEs, so an operation that holds its slot
        only while it is in flight always finds one.
        """
        slots = self._direct_slots
        return slots.pop() if slots else None

    def give_slot(self, slot: int) -> None:
        """Return a slot from :meth:`take_slot` (its file must be closed by then)."""
        assert self._direct_slots is not None
        self._direct_slots.append(slot)

    @property
    def ring(self) -> Ring[_Token]:
        """The underlying ring (diagnostics: ``peak_in_flight``, ``cq_overflow``)."""
        return self._ring

    @property
    def closed(self) -> bool:
        """Whether the engine has been torn down."""
        return self._closed

    @property
    def forked(self) -> bool:
        """Whether this is a child process of the one that created the engine (unusable)."""
        return self._generation != _fork_generation

    # --- operations ----------------------------------------------------------------------

    async def openat(
        self,
        path: PathArg,
        flags: int,
        mode: int = 0o600,
        *,
        dfd: int = AT_FDCWD,
        resolve: int | None = None,
    ) -> int:
        """Open ``path`` like ``os.open(path, flags, mode, dir_fd=dfd)``; returns the new fd.

        ``O_CLOEXEC`` is always added (as ``os.open`` makes fds non-inheritable).  If the
        caller is cancelled after the kernel opened the file, the engine closes the fd.
        With ``resolve`` (``RESOLVE_*`` bits), the open is an ``openat2``: for example
        ``RESOLVE_BENEATH`` refuses, with ``EXDEV``, a path that leaves ``dfd``.

        Raises:
            OSError: ``FileNotFoundError``, ``PermissionError``, ``IsADirectoryError``...
        """
        raw = _encode(path)
        ring = self._ring
        if resolve is not None and not flags & (os.O_CREAT | os.O_TMPFILE):
            mode = 0  # openat2 refuses a mode it would not use

        def prep(op: _Op) -> None:
            op.on_orphan = self._orphan_open
            if resolve is None:
                ring.prep_openat((op, 0), raw, flags | os.O_CLOEXEC, mode, dfd=dfd)
            else:
                ring.prep_openat2((op, 0), raw, flags | os.O_CLOEXEC, mode, resolve, dfd=dfd)

        (res,) = await self._run(1, prep)
        if res < 0:
            raise _os_error(-res, os.fspath(path))
        return res

    async def read(self, fd: int, size: int, offset: int) -> bytes:
        """Read up to ``size`` bytes at ``offset`` like ``os.pread`` (one read, may be short).

        ``offset=-1`` reads at (and advances) the file position, for pipes and the like.
        At most ``MAX_RW_COUNT`` (about 2 GiB) bytes are read at once.

        Raises:
            OSError: ``EBADF``, ``EISDIR``, ``EIO``...
        """
        if size < 0:
            raise ValueError("negative read size")
        buf = self._buffers.take(min(size, MAX_RW_COUNT))
        ring = self._ring

        def prep(op: _Op) -> None:
            ring.prep_read((op, 0), fd, buf, offset)

        (res,) = await self._run(1, prep)
        return self._buffers.result(buf, res)

    async def write(
        self, fd: int, data: WriteData, offset: int, *, force_async: bool = False
    ) -> int:
        """Write all of ``data`` at ``offset`` (resubmitting after short writes).

        ``offset=-1`` writes at the file position.  Returns ``len(data)`` in bytes.  On an
        error after a short write, the bytes written so far stay written.  With
        ``force_async`` the kernel never tries the write inside ``io_uring_enter`` (a
        buffered write may wait there for filesystem locks) but on an io-wq worker.

        Raises:
            OSError: ``EBADF``, ``ENOSPC``, ``EFBIG``, ``EIO``...
        """
        return await self._write_all(
            fd, data, offset, continuing=False, sqe_flags=IOSQE_ASYNC if force_async else 0
        )

    async def _write_all(
        self, fd: int, data: WriteData, offset: int, *, continuing: bool, sqe_flags: int = 0
    ) -> int:
        view = _byte_view(data)
        total = view.nbytes
        done = 0
        ring = self._ring
        while True:
            chunk: WriteData = data if done == 0 else view[done:]
            at = offset if offset < 0 else offset + done

            def prep(op: _Op, chunk: WriteData = chunk, at: int = at) -> None:
                ring.prep_write((op, 0), fd, chunk, at, sqe_flags=sqe_flags)

            (res,) = await self._run(1, prep, continuing=continuing or done > 0)
            if res < 0:
                raise _os_error(-res)
            done += res
            if done >= total:
                return total
            if res == 0:
                raise OSError(errno.EIO, "write made no progress")

    async def fsync(self, fd: int, datasync: bool = False) -> None:
        """``os.fsync(fd)``, or ``os.fdatasync(fd)`` with ``datasync``."""
        ring = self._ring

        def prep(op: _Op) -> None:
            ring.prep_fsync((op, 0), fd, datasync=datasync)

        (res,) = await self._run(1, prep)
        if res < 0:
            raise _os_error(-res)

    async def close(self, fd: int) -> None:
        """``os.close(fd)``; the fd number is free once this returns."""
        ring = self._ring

        def prep(op: _Op) -> None:
            ring.prep_close((op, 0), fd)

        (res,) = await self._run(1, prep)
        if res < 0:
            raise _os_error(-res)

    async def rename(
        self, old: PathArg, new: PathArg, *, old_dfd: int = AT_FDCWD, new_dfd: int = AT_FDCWD
    ) -> None:
        """``os.rename(old, new, src_dir_fd=old_dfd, dst_dir_fd=new_dfd)``: atomically
        replaces ``new``; visible on return."""
        raw_old, raw_new = _encode(old), _encode(new)
        ring = self._ring

        def prep(op: _Op) -> None:
            ring.prep_renameat((op, 0), raw_old, raw_new, old_dfd=old_dfd, new_dfd=new_dfd)

        (res,) = await self._run(1, prep)
        if res < 0:
            raise _os_error(-res, os.fspath(old), os.fspath(new))

    async def link(
        self, old: PathArg, new: PathArg, *, old_dfd: int = AT_FDCWD, new_dfd: int = AT_FDCWD
    ) -> None:
        """Hard-link ``new`` to ``old`` (``link(2)``: a symlink is linked, not followed).

        ``old_dfd``/``new_dfd``: directory fds the relative paths start from.

        Raises:
            FileExistsError: ``new`` exists (the fail-if-exists commit relies on this).
        """
        raw_old, raw_new = _encode(old), _encode(new)
        ring = self._ring

        def prep(op: _Op) -> None:
            ring.prep_linkat((op, 0), raw_old, raw_new, old_dfd=old_dfd, new_dfd=new_dfd)

        (res,) = await self._run(1, prep)
        if res < 0:
            raise _os_error(-res, os.fspath(old), os.fspath(new))

    async def unlink(self, path: PathArg, *, dfd: int = AT_FDCWD) -> None:
        """``os.unlink(path, dir_fd=dfd)``."""
        await self._unlinkat(path, 0, dfd)

    async def rmdir(self, path: PathArg, *, dfd: int = AT_FDCWD) -> None:
        """``os.rmdir(path, dir_fd=dfd)``."""
        await self._unlinkat(path, AT_REMOVEDIR, dfd)

    async def _unlinkat(self, path: PathArg, flags: int, dfd: int) -> None:
        raw = _encode(path)
        ring = self._ring

        def prep(op: _Op) -> None:
            ring.prep_unlinkat((op, 0), raw, dfd=dfd, flags=flags)

        (res,) = await self._run(1, prep)
        if res < 0:
            raise _os_error(-res, os.fspath(path))

    async def mkdir(self, path: PathArg, mode: int = 0o777, *, dfd: int = AT_FDCWD) -> None:
        """``os.mkdir(path, mode, dir_fd=dfd)`` (the umask applies)."""
        raw = _encode(path)
        ring = self._ring

        def prep(op: _Op) -> None:
            ring.prep_mkdirat((op, 0), raw, mode, dfd=dfd)

        (res,) = await self._run(1, prep)
        if res < 0:
            raise _os_error(-res, os.fspath(path))

    async def statx(
        self, path: PathArg, *, follow_symlinks: bool = True, dfd: int = AT_FDCWD
    ) -> StatxResult:
        """``os.stat(path, dir_fd=dfd)`` through ``statx(2)``."""
        raw = _encode(path)
        buf = ctypes.create_string_buffer(256)
        flags = 0 if follow_symlinks else AT_SYMLINK_NOFOLLOW
        ring = self._ring

        def prep(op: _Op) -> None:
            ring.prep_statx((op, 0), raw, buf, dfd=dfd, flags=flags)

        (res,) = await self._run(1, prep)
        if res < 0:
            raise _os_error(-res, os.fspath(path))
        return parse_statx(buf)

    async def fstat(self, fd: int) -> StatxResult:
        """``os.fstat(fd)`` through ``statx(fd, "", AT_EMPTY_PATH)``."""
        buf = ctypes.create_string_buffer(256)
        ring = self._ring

        def prep(op: _Op) -> None:
            ring.prep_statx((op, 0), b"", buf, dfd=fd, flags=AT_EMPTY_PATH)

        (res,) = await self._run(1, prep)
        if res < 0:
            raise _os_error(-res)
        return parse_statx(buf)

    async def write_fsync_rename(
        self,
        fd: int,
        data: WriteData,
        offset: int,
        tmp_path: PathArg,
        final_path: PathArg,
        datasync: bool = False,
        *,
        dir_fd: int | None = None,
    ) -> None:
        """Write ``data`` to ``fd`` (open on ``tmp_path``), sync it, rename it into place.

        Submitted as one linked chain ``write -> fsync -> rename [-> fsync(dir_fd)]``, so a
        durable create costs one submission.  Nothing after a failed write or fsync runs:
        the kernel completes the rest with ``ECANCELED`` and this raises the first real
        error (a failed rename is still followed by the directory fsync, which is
        harmless: the kernel does not break links at failed name operations).  If
        the write is short (which also breaks the chain), the rest is written and the
        fsync/rename re-submitted.  On success the file is visible as ``final_path``
        (durably so only with ``dir_fd``, the directory's fd, or a later directory fsync).
        The fd stays open.

        Cancelling the caller does not stop the chain: the rename may still happen.

        Raises:
            OSError: from the write or fsync (with ``tmp_path`` as filename), the rename
                (``tmp_path``, ``final_path``) or the directory fsync (no filename).
        """
        raw_tmp, raw_final = _encode(tmp_path), _encode(final_path)
        name_tmp, name_final = os.fspath(tmp_path), os.fspath(final_path)
        view = _byte_view(data)
        total = view.nbytes
        ring = self._ring
        rename_flags = 0 if dir_fd is None else IOSQE_IO_LINK

        def prep_tail(op: _Op, first: int) -> None:
            ring.prep_fsync((op, first), fd, datasync=datasync, sqe_flags=IOSQE_IO_LINK)
            ring.prep_renameat((op, first + 1), raw_tmp, raw_final, sqe_flags=rename_flags)
            if dir_fd is not None:
                ring.prep_fsync((op, first + 2), dir_fd)

        def prep(op: _Op) -> None:
            ring.prep_write((op, 0), fd, data, offset, sqe_flags=IOSQE_IO_LINK)
            prep_tail(op, 1)

        count = 3 if dir_fd is None else 4
        results = await self._run(count, prep)
        written = results[0]
        if 0 <= written < total:
            # A short write broke the link: the rest of the chain was cancelled.
            at = offset if offset < 0 else offset + written
            try:
                await self._write_all(fd, view[written:], at, continuing=True)
            except OSError as exc:
                raise _os_error(exc.errno or errno.EIO, name_tmp) from exc
            tail = await self._run(count - 1, lambda op: prep_tail(op, 0), continuing=True)
            results = [total, *tail]
        for step, res in enumerate(results):
            if res >= 0:
                continue
            if step <= 1:
                raise _os_error(-res, name_tmp)
            if step == 2:
                raise _os_error(-res, name_tmp, name_final)
            raise _os_error(-res)

    async def open_read_close(self, path: PathArg, max_size: int) -> bytes:
        """Return the whole content of a small file.

        One linked chain ``openat -> read(max_size + 1) -> close`` on a direct descriptor
        (no fd ever appears in the process) when the kernel supports it (Linux >= 5.19,
        see :attr:`direct_descriptors`); otherwise ``openat`` then a ``read -> close``
        chain.  The close is hard-linked, so it runs even when the read fails.  A read
        shorter than requested is taken as end of file (regular files).

        Raises:
            OSError: from the open or the read (``ENOENT``, ``EISDIR``...), or ``EFBIG``
                when the file holds more than ``max_size`` bytes.
            ValueError: ``max_size`` is negative or not below ``MAX_RW_COUNT``.
        """
        if not 0 <= max_size < MAX_RW_COUNT:
            raise ValueError(f"max_size must be within 0..{MAX_RW_COUNT - 1}")
        raw = _encode(path)
        name = os.fspath(path)
        buf = self._buffers.take(max_size + 1)
        ring = self._ring
        slots = self._direct_slots
        if slots is not None:

            def prep(op: _Op) -> None:
                slot = slots.pop()
                op.on_done = lambda _results: slots.append(slot)
                ring.prep_openat(
                    (op, 0), raw, os.O_RDONLY, 0, file_slot=slot, sqe_flags=IOSQE_IO_LINK
                )
                ring.prep_read(
                    (op, 1), slot, buf, 0, sqe_flags=IOSQE_FIXED_FILE | IOSQE_IO_HARDLINK
                )
                ring.prep_close_direct((op, 2), slot)

            opened, nread, _closed = await self._run(3, prep)
            if opened < 0:
                self._buffers.give(buf)
                raise _os_error(-opened, name)
        else:
            fd = await self.openat(path, os.O_RDONLY)

            def prep_fd(op: _Op) -> None:
                ring.prep_read((op, 0), fd, buf, 0, sqe_flags=IOSQE_IO_HARDLINK)
                ring.prep_close((op, 1), fd)

            nread, _closed = await self._run(2, prep_fd, continuing=True)
        data = self._buffers.result(buf, nread, name)
        if len(data) > max_size:
            raise OSError(errno.EFBIG, f"file is larger than {max_size} bytes", name)
        return data

    # --- callback-style submission -------------------------------------------------------

    def start(
        self,
        count: int,
        prep: Callable[[_Op], object],
        finish: Callable[[list[int]], R],
        *,
        on_orphan: Callable[[list[int]], None] | None = None,
        into: asyncio.Future[R] | None = None,
    ) -> asyncio.Future[R]:
        """Queue one operation of ``count`` SQEs without a coroutine; return its future.

        The building block for callers that chain operations with callbacks (the ``uring``
        FS backend's hot paths), where a coroutine and a task per operation would cost
        more than the operation.  Same rules as the coroutine methods: at most
        :attr:`max_in_flight` SQEs outstanding (a caller beyond it is queued FIFO and
        ``prep`` runs once slots are free), one ``io_uring_enter`` per loop iteration.

        Args:
            count: how many SQEs ``prep`` queues (all of them, or it raises).
            prep: called with the operation once slots are granted; prepares step ``i``
                with the token ``(op, i)`` on :attr:`ring`, linking steps as it likes.
            finish: turns the per-step results (``res`` of each CQE: a value or
                ``-errno``) into the future's value, or raises its exception.  Runs on
                the loop when the last CQE is reaped (synchronously: no extra loop
                iteration), only if the future is still live.  Returning
                :data:`DEFERRED` leaves the future pending: ``finish`` started a
                follow-up and resolves the future (``into``) itself.
            on_orphan: called with the results when the future was cancelled before they
                arrived (to release what the operation created, such as an fd).
            into: the future to return and resolve (default: a new one).

        Raises:
            RuntimeError: the engine is closed or broken, or used from another loop.
        """
        self._check()
        fut: asyncio.Future[R] = self._loop.create_future() if into is None else into
        if not self._waiters and self._in_flight + count <= self._limit:
            self._in_flight += count
            self._peak = max(self._peak, self._in_flight)
            self._queue_op(fut, count, prep, finish, on_orphan)
            return fut
        grant: asyncio.Future[None] = self._loop.create_future()
        self._waiters.append((count, grant))

        def granted(g: asyncio.Future[None]) -> None:
            if g.cancelled() or g.exception() is not None:
                if not fut.done():
                    fut.set_exception(
                        g.exception() or RuntimeError("the io_uring engine was closed")
                    )
                return
            if fut.done():  # the caller gave up while waiting
                self._release(count)
                return
            self._queue_op(fut, count, prep, finish, on_orphan)

        grant.add_done_callback(granted)
        return fut

    def _queue_op(
        self,
        fut: asyncio.Future[Any],
        count: int,
        prep: Callable[[_Op], object],
        finish: Callable[[list[int]], Any],
        on_orphan: Callable[[list[int]], None] | None,
    ) -> None:
        op = _Op(fut, count)
        op.finish = finish
        op.on_orphan = on_orphan
        try:
            self._prepare(op, count, prep)
        except BaseException as exc:
            if not fut.done():
                fut.set_exception(exc)

    def _prepare(self, op: _Op, count: int, prep: Callable[[_Op], object]) -> None:
        """Let ``prep`` queue the ``count`` SQEs of ``op`` (slots already taken) and have
        them submitted at the end of this loop iteration.

        Raises:
            BaseException: what ``prep`` raised; the slots are given back, and a chain
                left half-queued breaks the engine (it would link to unrelated SQEs).
        """
        ring = self._ring
        before = ring.in_flight
        try:
            prep(op)
        except BaseException as exc:
            queued = ring.in_flight - before
            self._release(count - queued)
            if queued:
                self._break(exc)
            raise
        self.stats.sqes += count
        if self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self._flush)

    def read_nowait(self, fd: int, size: int, offset: int) -> asyncio.Future[bytes]:
        """:meth:`read` as a future, without a coroutine (the hot path of FS reads).

        Raises (through the future):
            OSError: ``EBADF``, ``EISDIR``, ``EIO``...
        """
        if size < 0:
            raise ValueError("negative read size")
        buf = self._buffers.take(min(size, MAX_RW_COUNT))
        ring = self._ring
        buffers = self._buffers

        def prep(op: _Op) -> None:
            ring.prep_read((op, 0), fd, buf, offset)

        def finish(results: list[int]) -> bytes:
            return buffers.result(buf, results[0])

        return self.start(1, prep, finish)

    def read_now(self, fd: int, size: int, offset: int) -> bytes | asyncio.Future[bytes]:
        """Read at once if the kernel can (page cache), else like :meth:`read_nowait`.

        Prepares the read, submits it (with anything else queued) in an
        ``io_uring_enter`` right now, and reaps: a read served from the page cache
        completes inside that call, and its bytes are returned directly, without a
        future callback or a loop iteration.  Otherwise the read stays in flight and a
        future for it is returned.  One system call either way (a miss costs no second
        one, unlike ``preadv(RWF_NOWAIT)`` followed by a background read).  Use it while
        reads are mostly cached: it gives up batching the submission.

        Raises:
            OSError: the read failed at once (``EBADF``, ``EISDIR``...).
        """
        if (
            self._closing
            or self._broken is not None
            or self._waiters
            or self._in_flight >= self._limit
            or self._generation != _fork_generation
            or not 0 <= size <= MAX_RW_COUNT
        ):
            return self.read_nowait(fd, size, offset)  # (queues, or raises as it should)
        buffers = self._buffers
        buf = buffers.take(size)
        op = _Op(None, 1)
        self._ring.prep_read((op, 0), fd, buf, offset)
        self._in_flight += 1
        self._peak = max(self._peak, self._in_flight)
        self.stats.sqes += 1
        self._submit_and_reap(min_budget=1)
        if not op.remaining:  # completed inside io_uring_enter: nobody else saw it
            return buffers.result(buf, op.results[0])
        fut: asyncio.Future[bytes] = self._loop.create_future()
        op.fut = fut

        def finish(results: list[int]) -> bytes:
            return buffers.result(buf, results[0])

        op.finish = finish
        return fut

    def close_soon(self, fd: int) -> None:
        """Close ``fd`` through the ring without waiting (its result is not reported).

        For descriptors nobody waits on any more (a directory fd after a commit, a small
        file read whole).  Falls back to a local ``close`` if the engine is gone.
        """
        if self._closed or self._broken is not None or self._generation != _fork_generation:
            os.close(fd)
        elif self._in_flight < self._limit and not self._waiters:
            self._close_internal(fd)
        else:
            task = self._loop.create_task(self._close_when_possible(fd))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def abandon(self) -> None:
        """Tear down at once, without the loop (its loop is closed, or after ``fork()``).

        Waiters fail with :class:`RuntimeError`; buffers the kernel may still use are kept
        for the rest of the process.  Idempotent.
        """
        if self._closed:
            return
        if self._generation != _fork_generation:
            self._forget_after_fork()
            return
        if not self._loop.is_closed():
            self._teardown("the io_uring engine was abandoned")
            return
        # The loop is gone: nobody can wait on its futures any more (and completing them
        # would schedule callbacks on a closed loop).  Drop the ring, keep the buffers.
        self._closed = True
        pending = self._ring.detach_keepalives()
        if pending:
            _ABANDONED.append(pending)
        self._ring.close()
        os.close(self._efd)

    # --- lifecycle -----------------------------------------------------------------------

    async def drain(self) -> None:
        """Wait until no operation is queued, in flight or waiting for a slot."""
        self._check_process()
        while not self._closed and (self._in_flight or self._waiters or self._background):
            if self._background:
                await asyncio.wait(set(self._background))
                continue
            idle = self._loop.create_future()
            self._idle_waiters.append(idle)
            await idle

    async def aclose(self) -> None:
        """Refuse new operations, wait for those in flight, then tear the ring down.

        If this is cancelled (or the engine broke), the ring is torn down anyway; buffers
        of operations the kernel still holds are kept for the rest of the process, and
        their waiters get :class:`RuntimeError`.  Idempotent.
        """
        if self._closed:
            return
        if self._generation != _fork_generation:
            self._forget_after_fork()
            return
        self._closing = True
        try:
            await self.drain()
        finally:
            self._teardown("the io_uring engine was closed before the operation completed")

    def __del__(self) -> None:
        if getattr(self, "_closed", True):
            return
        if self._generation != _fork_generation:
            self._forget_after_fork()
            return
        # The loop holds our reader callback, so we only get here once the loop is gone.
        if self._ring.in_flight:
            _ABANDONED.append(self._ring.detach_keepalives())
        self._closed = True
        self._ring.close()
        os.close(self._efd)
        warnings.warn(f"unclosed {self!r}", ResourceWarning, source=self, stacklevel=1)

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"in_flight={self._in_flight}/{self._limit}"
        return f"<UringEngine {state}>"

    # --- machinery -----------------------------------------------------------------------

    def _check_process(self) -> None:
        if self._generation != _fork_generation:
            raise RuntimeError(
                "this UringEngine belongs to the parent process (created before fork()); "
                "create a new UringEngine in the child"
            )

    def _check(self) -> None:
        self._check_process()
        if self._closing:
            raise RuntimeError("the io_uring engine is closed")
        if self._broken is not None:
            raise RuntimeError("the io_uring engine is broken") from self._broken
        if asyncio.get_running_loop() is not self._loop:
            raise RuntimeError("UringEngine used from another event loop than its own")

    async def _run(
        self, count: int, prep: Callable[[_Op], object], *, continuing: bool = False
    ) -> list[int]:
        """Take ``count`` slots, let ``prep`` queue exactly ``count`` SQEs, await them all.

        ``continuing``: a later step of an operation that started before ``aclose()``,
        which must be allowed to finish (and release what it holds).
        """
        if continuing:
            self._check_process()
            if self._broken is not None or self._closed:
                raise RuntimeError("the io_uring engine is closed")
        else:
            self._check()
        if not self._waiters and self._in_flight + count <= self._limit:
            self._in_flight += count  # fast path of _acquire, without a coroutine
            self._peak = max(self._peak, self._in_flight)
        else:
            await self._acquire(count)
        fut: asyncio.Future[list[int]] = self._loop.create_future()
        op = _Op(fut, count)
        self._prepare(op, count, prep)
        try:
            return await fut
        except asyncio.CancelledError:
            # The result arrived but this task was cancelled before it resumed: nobody
            # will see it, so clean up here (a cancelled future is handled in _deliver).
            orphan = op.on_orphan
            if (
                orphan is not None
                and fut.done()
                and not fut.cancelled()
                and fut.exception() is None
            ):
                orphan(fut.result())
            raise

    async def _acquire(self, count: int) -> None:
        if not self._waiters and self._in_flight + count <= self._limit:
            self._in_flight += count
            self._peak = max(self._peak, self._in_flight)
            return
        fut: asyncio.Future[None] = self._loop.create_future()
        entry = (count, fut)
        self._waiters.append(entry)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._release(count)  # granted, but cancelled before resuming
            else:
                try:
                    self._waiters.remove(entry)
                except ValueError:
                    pass
                self._wake_waiters()
            raise

    def _release(self, count: int) -> None:
        self._in_flight -= count
        self._wake_waiters()

    def _wake_waiters(self) -> None:
        waiters = self._waiters
        while waiters:
            count, fut = waiters[0]
            if fut.done():  # cancelled, not yet removed by its task
                waiters.popleft()
                continue
            if self._in_flight + count > self._limit:
                break
            waiters.popleft()
            self._in_flight += count
            self._peak = max(self._peak, self._in_flight)
            fut.set_result(None)
        if not self._in_flight and not waiters and self._idle_waiters:
            idle, self._idle_waiters = self._idle_waiters, []
            for fut in idle:
                if not fut.done():
                    fut.set_result(None)

    def _schedule_flush(self) -> None:
        if self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        self._submit_and_reap()

    def _submit_and_reap(self, min_budget: int = 0) -> None:
        """Submit what is queued, then reap (at least ``min_budget`` completions if any)."""
        ring = self._ring
        if ring.closed:
            return
        if ring.unsubmitted:
            try:
                ring.submit()
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EBUSY):
                    self._break(exc)
                    return
            else:
                self.stats.submits += 1
        self._reap(min_budget)
        if not ring.closed and ring.unsubmitted and self._retry_handle is None:
            # The kernel took only part of the batch (short of memory): try again soon.
            self._retry_handle = self._loop.call_later(0.001, self._retry_flush)

    def _retry_flush(self) -> None:
        self._retry_handle = None
        self._submit_and_reap()

    def _on_eventfd(self) -> None:
        self.stats.wakeups += 1
        try:
            os.eventfd_read(self._efd)  # drain first: later completions re-arm it
        except BlockingIOError:
            pass
        self._reap()

    def _reap(self, min_budget: int = 0) -> None:
        """Deliver up to what is left of this iteration's budget of completions.

        ``min_budget``: deliver at least this many even past the budget (a synchronous
        read's own completion wakes no task).
        """
        budget = max(self._reap_batch - self._reaped, min_budget)
        if budget <= 0:
            return  # _reap_next_iteration is scheduled and carries on
        ring = self._ring
        try:
            completions = ring.reap(budget)
        except StrayCompletionError as exc:
            self._deliver(exc.completions)
            self._break(exc)
            return
        if completions:
            self._reaped += len(completions)
            self._deliver(completions)
        if self._reap_handle is None and (self._reaped or ring.completions_ready):
            # Renew the budget (and reap what is left) in the next loop iteration, after
            # the tasks woken now have run and timers had their turn.
            self._reap_handle = self._loop.call_soon(self._reap_next_iteration)

    def _reap_next_iteration(self) -> None:
        self._reap_handle = None
        self._reaped = 0
        self._reap()

    def _deliver(self, completions: list[tuple[_Token, int, int]]) -> None:
        for (op, index), res, _flags in completions:
            self._in_flight -= 1
            op.results[index] = res
            op.remaining -= 1
            if op.remaining:
                continue
            if op.on_done is not None:
                op.on_done(op.results)
            fut = op.fut
            if fut is None:  # read_now's caller takes the result itself
                continue
            if not fut.done():
                finish = op.finish
                if finish is None:
                    fut.set_result(op.results)
                else:
                    try:
                        value = finish(op.results)
                    except Exception as exc:  # the operation's error, for its waiter
                        fut.set_exception(exc)
                    else:
                        if value is not DEFERRED:
                            fut.set_result(value)
            elif fut.cancelled() and op.on_orphan is not None:
                op.on_orphan(op.results)
        self.stats.completions += len(completions)
        self._wake_waiters()

    def _orphan_open(self, results: list[int]) -> None:
        fd = results[0]
        if fd < 0:
            return
        self.stats.orphan_fds_closed += 1
        if self._closed or self._broken is not None:
            os.close(fd)  # no ring left to do it; a local close of a just-opened file
            return
        if self._in_flight < self._limit and not self._waiters:
            self._close_internal(fd)
            return
        task = self._loop.create_task(self._close_when_possible(fd))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _close_internal(self, fd: int) -> None:
        self._in_flight += 1
        self._peak = max(self._peak, self._in_flight)
        op = _Op(self._unawaited, 1)
        self._ring.prep_close((op, 0), fd)
        self.stats.sqes += 1
        self._schedule_flush()

    async def _close_when_possible(self, fd: int) -> None:
        try:
            await self._acquire(1)
        except RuntimeError:  # torn down while waiting (aclose cancelled, engine broken)
            os.close(fd)
            return
        if self._closed:
            os.close(fd)
            return
        self._in_flight -= 1  # _close_internal takes the slot itself
        self._close_internal(fd)

    def _break(self, exc: BaseException) -> None:
        """The ring can no longer be trusted: fail everything and tear it down."""
        if self._broken is None:
            self._broken = exc
        self._teardown("the io_uring engine broke", cause=exc)

    def _teardown(self, message: str, cause: BaseException | None = None) -> None:
        if self._closed:
            return
        self._closed = True
        self._closing = True
        for handle in (self._flush_handle, self._retry_handle, self._reap_handle):
            if handle is not None:
                handle.cancel()
        self._flush_handle = self._retry_handle = self._reap_handle = None
        if not self._loop.is_closed():
            self._loop.remove_reader(self._efd)
        pending = self._ring.detach_keepalives()
        if pending:
            _ABANDONED.append(pending)
        for (op, _index), _keep in pending.values():
            if op.fut is not None and not op.fut.done():
                error = RuntimeError(message)
                error.__cause__ = cause
                op.fut.set_exception(error)
        while self._waiters:
            _count, fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(RuntimeError(message))
        for fut in self._idle_waiters:
            if not fut.done():
                fut.set_result(None)
        self._idle_waiters = []
        self._in_flight = 0
        self._ring.close()
        os.close(self._efd)

    def _forget_after_fork(self) -> None:
        """In a forked child: drop our copies of the ring and eventfd, touch nothing else."""
        self._closed = True
        self._ring.detach_keepalives()
        self._ring.close()
        os.close(self._efd)
