"""The ``uring`` backend: local files with every file operation submitted to io_uring.

io_uring backend
----------------
What was chosen, and why.

* **Raw syscalls, not liburing.**  The binding (:mod:`.uring_ring`) sets the ring up with
  ``io_uring_setup``/``io_uring_enter``/``io_uring_register`` through :mod:`ctypes` and maps
  the rings with :mod:`mmap`.  Debian's ``liburing.so.2`` would only cover setup and
  ``io_uring_submit``: everything that touches an SQE or a CQE is ``static inline`` in its
  header, so a ctypes binding writes SQEs and reads CQEs itself either way, and going
  through liburing would add the layout of its private ``struct io_uring`` (changed across
  2.x releases) to the contract.  The kernel ABI is small and frozen; there is no library
  to be missing at run time and nothing for ``.ci`` to install.  SQEs and CQEs are
  written with bounds-checked ``struct.pack_into``/``unpack_from``.
* **x86-64 only, with a clean fallback.**  The ring protocol needs acquire/release ordering
  of the head/tail words; under x86-64 total store order, plain aligned 32-bit loads and
  stores (one ``ctypes.c_uint32`` access each, each in its own C call) provide exactly
  that.  Other architectures need barriers Python cannot emit, so
  :func:`~.uring_ring.probe` reports them unavailable instead of guessing.
  ``fs = "uring"`` then fails with ``FsUnavailable`` (an ``FsSpecError``) naming the
  probe's reason; ``fs = "auto"`` picks ``posix`` and logs why (logger ``aiodbox.fs``).
  The same happens for old kernels (< 5.15), ``kernel.io_uring_disabled``, seccomp
  filters, or ``AIODBOX_URING_FORCE_UNAVAILABLE=reason`` (how the tests simulate it).
* **No SQPOLL.**  Kernel-side submission polling spins a kernel thread per ring and needs a
  full store-load fence before checking ``IORING_SQ_NEED_WAKEUP``, which Python cannot
  express.  Submissions are batched instead: everything queued in one loop iteration goes
  to the kernel in one ``io_uring_enter``; completions come back through an eventfd
  watched by the event loop (no thread, no polling loop), at most ``reap_batch`` per
  iteration.
* **One ring per process and event loop.**  All ``uring`` FS instances used on one loop
  share one :class:`~.uring_engine.UringEngine` (sized by the first one's
  ``uring_entries``/``uring_max_in_flight``); the last ``aclose`` tears it down, and a
  ring left behind by a closed loop is torn down by the next one.  ``--workers N``
  processes each get their own ring; a forked child never touches its parent's.  The
  engine bounds the SQEs in flight (FIFO back-pressure, never an error).
* **Confinement as in posix.**  The root directory is opened once (through the ring);
  every path is resolved by ``IORING_OP_OPENAT2`` with ``RESOLVE_BENEATH |
  RESOLVE_NO_MAGICLINKS`` relative to it, so ``..``, absolute symlinks and symlinks
  leading out fail in the kernel (``EXDEV``, reported as ``FsPermission``).  Name
  operations (``renameat2``, ``linkat``, ``unlinkat``, ``mkdirat``, ``statx``) then act on
  one name relative to a directory fd obtained that way.
* **Chains save round trips.**  Reading a small file is one linked chain ``openat2 ->
  read -> close`` on a direct descriptor (no fd ever exists in the process).  A create
  opens the directory and the temp file in one submission and keeps the directory fd; the
  commit is then one chain ``write -> fsync|fdatasync -> renameat2 [-> fsync(dir)]``.
  Fail-if-exists uses ``renameat2(RENAME_NOREPLACE)`` (``link`` + ``unlink`` only where
  a filesystem refuses it): the kernel does **not** treat a failed ``renameat``,
  ``linkat``, ``unlinkat``, ``mkdirat`` or ``statx`` as a broken link (checked on Linux
  6.18), so ``linkat -> unlinkat`` in one chain would delete the temp file after a failed
  link.  Nothing destructive ever follows a name operation in a chain.
* **Group-committed directory fsyncs.**  A commit needs *an* fsync of its directory that
  started after its rename.  If none of that directory is running, the commit appends one
  to its own chain (the chain orders it after the rename).  Otherwise it waits for the
  next round, which starts when the running fsync ended and serves every commit that
  asked meanwhile (:class:`DirSyncer`, asyncio futures instead of posix's condition
  variable).  ``FsyncPolicy`` means exactly what it means for posix: ``always`` fsyncs
  the file and the directory after every name change (also deletes and the source
  directory of a move), ``optimized`` fdatasyncs the file and fsyncs the directory when a
  name appeared, ``never`` syncs nothing.
* **Reads: a page-cache fast path, then the ring.**  By default, data that is already in
  the page cache is copied exactly as posix does it: one non-blocking ``preadv(RWF_NOWAIT)``
  on the loop thread (and a small file opened with ``openat2(RESOLVE_CACHED)``); only a
  miss becomes a ring read.  Measured: a cached 4 KiB read through the ring (SQE packing,
  ``io_uring_enter`` through ctypes, CQE unpacking) costs 10-12 µs of loop CPU against
  about 2 µs for ``preadv``, so a pure-ring backend ran warm reads at 0.27x posix.  With
  ``uring_page_cache_fast_path = False`` every read goes through the ring: while recent
  reads were cached, a read is submitted at once (:meth:`UringEngine.read_now`: the kernel
  serves a cached read inside that ``io_uring_enter``); on a cold cache (hit rate
  < 10 %) reads are queued and batched.
* **Writes go to io-wq.**  Every write is flagged ``IOSQE_ASYNC``: a buffered write tried
  inline in ``io_uring_enter`` can wait for filesystem locks (journal) on the loop thread.
  Reads keep the inline attempt (the kernel honours ``IOCB_NOWAIT`` for reads).
* **What is not a ring operation.**  Listing a directory (io_uring has no ``getdents``),
  and ``fchmod``/``fchown`` of a new file when the umask would narrow the requested mode
  or a group is requested: these run on a small, lazily started
  :class:`~.workers.WorkerPool` (``io_threads``).  ``ftruncate`` (rolling back an append
  handle's spill file) uses ``IORING_OP_FTRUNCATE`` where the kernel has it (6.9) and the
  pool otherwise.  ``flock`` (``try_lock``) stays a non-blocking call on the loop.

Measured cost (see ``bench/fs_bench.py``): on a 2-core VM the ring beats the posix
backend where the loop thread has CPU to spare, but every Python step of an io_uring
operation (SQE packing, ``io_uring_enter`` through ctypes, CQE unpacking, futures) runs
on the loop thread, while posix spends its open/read/close CPU on worker threads on the
other core, and reads cached data with one C-level ``preadv``.

Theory of operation
-------------------
:class:`UringFileEngine` implements the :class:`~.local.Engine` interface, so the handle
logic (buffers, commit state, callbacks) is the one ``posix`` uses.  The hot paths
(``read_now``/``pread``, opening a small file, creating, committing) are callback
chains over :meth:`UringEngine.start`, which returns a future without a coroutine and
lets a completion's ``finish`` resolve it synchronously or hand it to a follow-up step
(``DEFERRED``); the rarer multi-step operations (``mkdir -p``, ``rename``, ``stat``...)
are coroutines run as tasks.  The engine binds to the running loop on first use (an FS
can be built outside a loop); the root directory fd is opened on first use as well.
Every fd an operation opens is closed if its waiter is cancelled, including in the gap
between the result arriving and the waiting task resuming.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import errno
import functools
import os
import stat as stat_mod
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, Final, TypeVar

from aiodbox.fs import paths
from aiodbox.fs.api import FsStat, FsyncPolicy, Perms
from aiodbox.fs.backends.beneath import Beneath, dir_mode, open_cached_at, read_cached
from aiodbox.fs.backends.local import Engine, LocalFS, OpenedFile
from aiodbox.fs.backends.posix_threads import DirSyncer as ThreadDirSyncer
from aiodbox.fs.backends.posix_threads import name_staged, sync_staged_dir, unlink_staged
from aiodbox.fs.backends.uring_engine import (
    DEFERRED,
    Operation,
    UringEngine,
    UringUnavailable,
    parse_statx,
    probe,
)
from aiodbox.fs.backends.uring_ring import (
    AT_EMPTY_PATH,
    IOSQE_ASYNC,
    IOSQE_FIXED_FILE,
    IOSQE_IO_HARDLINK,
    IOSQE_IO_LINK,
    RESOLVE_BENEATH,
    RESOLVE_NO_MAGICLINKS,
    Op,
)
from aiodbox.fs.backends.workers import WorkerPool
from aiodbox.fs.errors import FsPermission

__all__ = ["DirSyncer", "UringFileEngine", "UringUnavailable", "uring_fs"]

T = TypeVar("T")

_RESOLVE: Final = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS
_MAX_CHAIN_WRITE: Final = 1 << 20
"""Largest staged file written by one chained write (a larger one goes step by step)."""
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY
_O_PATH: Final = getattr(os, "O_PATH", os.O_RDONLY)
_COPY_CHUNK: Final = 1 << 20
_RENAME_NOREPLACE: Final = 1
_ECANCELED: Final = errno.ECANCELED


def _oserror(err: int, filename: object = None) -> OSError:
    if filename is None:
        return OSError(err, os.strerror(err))
    return OSError(err, os.strerror(err), filename)


def _open_error(op: str, path: str, err: int) -> OSError:
    """The error of a failed confined open (``EXDEV``: the path leads out of the root)."""
    if err == errno.EXDEV:
        return FsPermission(op, path, errno.EACCES, "the path leads outside the FS root")
    return _oserror(err, path)


def _chain_error(results: list[int], filename: object = None) -> OSError | None:
    """The first real error of a linked chain (later steps report ``ECANCELED``)."""
    for res in results:
        if res < 0 and res != -_ECANCELED:
            return _oserror(-res, filename)
    for res in results:
        if res < 0:
            return _oserror(-res, filename)
    return None


def _file_sync_flags(policy: FsyncPolicy) -> bool | None:
    """``fdatasync`` (True), ``fsync`` (False) or nothing (None) for a file's data."""
    if policy is FsyncPolicy.ALWAYS:
        return False
    if policy is FsyncPolicy.OPTIMIZED:
        return True
    return None


def _ignore(results: list[int]) -> None:
    return None


def _fix_perms(fd: int, mode: int, gid: int | None) -> None:
    """(Worker thread.)  Give a new file or directory exactly ``mode`` and group ``gid``."""
    os.fchmod(fd, mode)
    if gid is not None:
        os.fchown(fd, -1, gid)


def _scan(dfd: int, dirs: bool) -> list[str]:
    """(Worker thread.)  Names in the directory ``dfd`` of one kind; temp files hidden."""
    out: list[str] = []
    with os.scandir(dfd) as it:  # scandir works on a dup of dfd and closes that
        for entry in it:
            if entry.name.startswith(paths.TEMP_PREFIX):
                continue
            if entry.is_dir(follow_symlinks=False) == dirs:
                out.append(entry.name)
    return out


def _scan_temp(dfd: int) -> list[str]:
    """(Worker thread.)  The temp-file names in directory ``dfd``."""
    with os.scandir(dfd) as it:
        return [e.name for e in it if e.name.startswith(paths.TEMP_PREFIX)]


def _relay(
    src: asyncio.Future[Any],
    dst: asyncio.Future[Any],
    orphan: Callable[[Any], None] | None = None,
) -> None:
    """Copy ``src``'s outcome into ``dst``.

    If ``dst`` was cancelled meanwhile, a successful result goes to ``orphan`` instead
    (to close the descriptor nobody will receive).
    """
    if dst.done():
        # (exception() also marks it retrieved: no "never retrieved" log for a result
        # nobody waits for any more.)
        if not src.cancelled() and src.exception() is None and orphan is not None:
            orphan(src.result())
        return
    if src.cancelled():
        dst.cancel()
        return
    exc = src.exception()
    if exc is not None:
        dst.set_exception(exc)
    else:
        dst.set_result(src.result())


# --------------------------------------------------------------- the shared rings


@dataclasses.dataclass
class _Shared:
    engine: UringEngine
    pid: int
    users: int = 0


_SHARED: dict[asyncio.AbstractEventLoop, _Shared] = {}
"""The ring of each event loop of this process (see :func:`_acquire_ring`)."""


def _acquire_ring(options: dict[str, Any]) -> UringEngine:
    """The running loop's shared engine (created with ``options`` if there is none).

    Entries of loops that were closed, and of the parent process after a ``fork()``, are
    torn down first: they can never be used again.
    """
    loop = asyncio.get_running_loop()
    pid = os.getpid()
    for other, shared in list(_SHARED.items()):
        if shared.pid != pid or other.is_closed() or shared.engine.closed or shared.engine.forked:
            del _SHARED[other]
            shared.engine.abandon()
    shared_now = _SHARED.get(loop)
    if shared_now is None:
        shared_now = _SHARED[loop] = _Shared(UringEngine(**options), pid)
    shared_now.users += 1
    return shared_now.engine


async def _release_ring(engine: UringEngine) -> None:
    """One user fewer; the last one closes the engine (after its operations finished)."""
    for loop, shared in list(_SHARED.items()):
        if shared.engine is engine:
            shared.users -= 1
            if shared.users > 0:
                return
            del _SHARED[loop]
            break
    await engine.aclose()


# --------------------------------------------------------- directory group commit


class _Round:
    __slots__ = ("dfd", "waiters")

    def __init__(self, dfd: int) -> None:
        self.dfd = dfd
        self.waiters: list[asyncio.Future[None]] = []


class DirSyncer:
    """Group commit of directory fsyncs, on the event loop (see the module docstring).

    Keys are FS-relative directory paths.  At most one fsync per directory runs at a
    time; requests made while one runs share the next one.  Counters: ``requests``
    (commits and renames that needed a directory fsync), ``fsyncs`` (fsyncs issued) and
    ``chained`` (those of them that ran at the end of a commit's own chain).
    """

    def __init__(self, owner: UringFileEngine) -> None:
        self._owner = owner
        self._busy: set[str] = set()
        self._next: dict[str, _Round] = {}
        self.requests = 0
        self.fsyncs = 0
        self.chained = 0

    def claim(self, key: str) -> bool:
        """Count a request; True if the caller may fsync the directory in its own chain.

        That is allowed when no fsync of ``key`` runs: the chained fsync starts after the
        caller's link/rename, so it is the one the caller needs, and nobody else's
        waits on it.  After True the caller must call :meth:`release` once its chain
        completed, whatever the outcome.
        """
        self.requests += 1
        if key in self._busy:
            return False
        self._busy.add(key)
        self.fsyncs += 1
        self.chained += 1
        return True

    def release(self, key: str) -> None:
        """A claimed (chained) fsync finished: start the round that waited for it."""
        self._busy.discard(key)
        self._start(key)

    def sync(self, key: str, dfd: int, *, counted: bool = False) -> asyncio.Future[None]:
        """Return a future resolved once an fsync of the directory, started after now, ended.

        Args:
            key: the directory's FS path.
            dfd: a descriptor of it; it must stay open until the future is done (it may
                be the one the round fsyncs).
            counted: the request was already counted by :meth:`claim`.
        """
        if not counted:
            self.requests += 1
        rnd = self._next.get(key)
        if rnd is None:
            rnd = self._next[key] = _Round(dfd)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        rnd.waiters.append(waiter)
        if key not in self._busy:
            self._start(key)
        return waiter

    def _start(self, key: str) -> None:
        rnd = self._next.pop(key, None)
        if rnd is None:
            return
        self._busy.add(key)
        self.fsyncs += 1
        dfd = rnd.dfd

        def finish(results: list[int]) -> None:
            if results[0] < 0:
                raise _oserror(-results[0])

        try:
            eng = self._owner.ring_engine()
            ring = eng.ring
            fut = eng.start(1, lambda op: ring.prep_fsync((op, 0), dfd), finish)
        except RuntimeError as exc:  # the FS or its ring is closed
            self._busy.discard(key)
            self._finish_round(rnd, exc)
            return
        fut.add_done_callback(functools.partial(self._done, key, rnd))

    def _done(self, key: str, rnd: _Round, fut: asyncio.Future[None]) -> None:
        self._busy.discard(key)
        exc = RuntimeError("directory fsync cancelled") if fut.cancelled() else fut.exception()
        self._finish_round(rnd, exc)
        self._start(key)

    @staticmethod
    def _finish_round(rnd: _Round, exc: BaseException | None) -> None:
        for waiter in rnd.waiters:
            if waiter.done():
                continue
            if exc is None:
                waiter.set_result(None)
            elif isinstance(exc, OSError):
                waiter.set_exception(OSError(exc.errno, exc.strerror))
            else:
                waiter.set_exception(RuntimeError(str(exc)))


# ------------------------------------------------------------------- the engine


class UringFileEngine(Engine):
    """:class:`~.local.Engine` whose file operations are io_uring submissions.

    Args:
        root: the FS root directory (created, with parents, by the first write).
        entries: ring size (submission queue entries) if this FS creates the loop's ring.
        max_in_flight: bound on SQEs outstanding (default: the ring size).
        reap_batch: completions handled per loop iteration.
        direct_descriptors: read small files through a direct descriptor chain.
        io_threads: the most helper threads for what io_uring cannot do (directory
            listing, ``fchmod``/``fchown`` when needed); started only on demand.

    Raises:
        UringUnavailable: the probe says io_uring cannot be used here (with the reason).
    """

    name = "uring"
    nowait_reads = False
    reads_now = True

    def __init__(
        self,
        root: str,
        *,
        entries: int = 256,
        max_in_flight: int | None = None,
        reap_batch: int = 16,
        direct_descriptors: bool = True,
        io_threads: int = 2,
        page_cache_fast_path: bool = True,
    ) -> None:
        reason = probe()
        if reason is not None:
            raise UringUnavailable(reason)
        if io_threads < 1:
            raise ValueError("io_threads must be at least 1")
        self.root = os.path.abspath(root)
        self._raw_root = os.fsencode(self.root)
        self._ring_options: dict[str, Any] = {
            "entries": entries,
            "max_in_flight": max_in_flight,
            "reap_batch": reap_batch,
            "direct_descriptors": direct_descriptors,
        }
        self._io_threads = io_threads
        self._uring: UringEngine | None = None
        self._root_fd: int | None = None
        self._root_lock: asyncio.Lock | None = None
        self._umask: int | None = None
        self._noreplace = True  # until a filesystem refuses RENAME_NOREPLACE
        self._temp_dirs: dict[int, int] = {}
        """Temp-file fd -> fd of its directory (opened by the create, used by the commit)."""
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pool: WorkerPool | None = None
        self._closed = False
        self.dirsync = DirSyncer(self)
        self._staging_lock = threading.Lock()
        self._staging_calls: tuple[Beneath, ThreadDirSyncer] | None = None
        self.ring_reads = 0
        self.ring_opens = 0
        self.ring_commits = 0
        self.helper_jobs = 0
        self.page_cache_fast_path = page_cache_fast_path
        if page_cache_fast_path:
            # Data already in the page cache is copied by one non-blocking system call
            # on the loop (as posix does); a ring round trip through ctypes costs about
            # five times as much for the same bytes.  Misses go through the ring.
            self.nowait_reads = True
            self.reads_now = False

    @property
    def nowait_opens(self) -> bool:  # type: ignore[override]
        return self.page_cache_fast_path and self._root_fd is not None

    def read_small_now(self, path: str, limit: int) -> bytes | None:
        """A small file read whole from the caches on the loop (no I/O), as posix does;
        ``BlockingIOError`` sends it through the ring instead."""
        root = self._root_fd
        if root is None:
            raise BlockingIOError(errno.EAGAIN, "root not open yet")
        return read_cached(open_cached_at(root, path), limit)

    # ------------------------------------------------------------ plumbing

    def ring_engine(self) -> UringEngine:
        """The loop's shared engine, joined on first use (in the running loop).

        Raises:
            RuntimeError: the FS was closed (or no loop is running).
            UringUnavailable: the ring cannot be set up.
        """
        eng = self._uring
        if eng is None or eng.closed or eng.forked:
            # (After fork() the child gets a ring of its own; the inherited root and
            # directory fds stay valid.)
            if self._closed:
                raise RuntimeError("the uring FS is closed")
            eng = self._uring = _acquire_ring(self._ring_options)
        return eng

    def _task(
        self, coro: Coroutine[Any, Any, T], orphan: Callable[[Any], None] | None = None
    ) -> asyncio.Future[T]:
        """Run ``coro`` as a task; return a future for its outcome, *detached* from it.

        Cancelling the returned future abandons the wait, never the operation: the task
        runs on, so a directory fd is never closed while a queued ``renameat``/
        ``unlinkat`` that resolves it (at execution, on an io-wq worker) is pending, and a
        chain that closes its own fd is never followed by a second close.  A result that
        arrives for a cancelled caller goes to ``orphan`` (to close what it opened).
        :meth:`aclose` waits for the tasks.
        """
        loop = asyncio.get_running_loop()
        task = loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        out: asyncio.Future[T] = loop.create_future()
        task.add_done_callback(lambda t: _relay(t, out, orphan))
        return out

    def _failed(self, exc: BaseException) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        fut.set_exception(exc)
        return fut

    def _helper(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        pool = self._pool
        if pool is None:
            pool = self._pool = WorkerPool(self._io_threads, name="aiodbox-uring-helper")
        self.helper_jobs += 1
        return pool.submit(fn, *args)

    def _close_soon(self, *fds: int) -> None:
        """Close ``fds`` through the ring without waiting (locally if the ring is gone)."""
        try:
            eng = self.ring_engine()
        except RuntimeError:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            return
        for fd in fds:
            eng.close_soon(fd)

    def _close_after(self, fut: asyncio.Future[Any], fd: int) -> None:
        """Close ``fd`` once ``fut`` is done (a directory fsync round may still use it)."""
        if fut.done():
            self._close_soon(fd)
        else:
            fut.add_done_callback(lambda _f: self._close_soon(fd))

    async def _root(self, create: bool = False) -> int:
        """The root directory's fd, opened (and with ``create`` made) on first need."""
        fd = self._root_fd
        if fd is not None:
            return fd
        if self._closed:
            raise RuntimeError("the uring FS is closed")
        if self._root_lock is None:
            self._root_lock = asyncio.Lock()
        async with self._root_lock:
            if self._root_fd is not None:
                return self._root_fd
            eng = self.ring_engine()
            try:
                fd = await eng.openat(self._raw_root, _DIR_FLAGS)
            except FileNotFoundError:
                if not create:
                    raise
                await self._mkdir_parents(self._raw_root)
                fd = await eng.openat(self._raw_root, _DIR_FLAGS)
            self._root_fd = fd
            return fd

    async def _mkdir_parents(self, raw: bytes) -> None:
        """``os.makedirs(root, 0o700, exist_ok=True)`` through the ring (the trusted root)."""
        eng = self.ring_engine()
        missing: list[bytes] = []
        path = raw
        while True:
            try:
                await eng.mkdir(path, 0o700)
                break
            except FileExistsError:
                break
            except FileNotFoundError:
                parent = os.path.dirname(path)
                if parent == path:
                    raise
                missing.append(path)
                path = parent
        for path in reversed(missing):
            try:
                await eng.mkdir(path, 0o700)
            except FileExistsError:
                pass

    async def _process_umask(self) -> int:
        """The process umask, read once (through the ring) from ``/proc/self/status``.

        (``os.umask`` can only be read by setting it, which races with other threads.)
        Where it cannot be read, 0o777 makes every create fix its mode explicitly.
        """
        if self._umask is None:
            try:
                status = await self.ring_engine().open_read_close(b"/proc/self/status", 8191)
                line = next(ln for ln in status.splitlines() if ln.startswith(b"Umask:"))
                self._umask = int(line.split()[1], 8)
            except (OSError, StopIteration, ValueError, IndexError):
                self._umask = 0o777
        return self._umask

    def _needs_fix(self, mode: int, gid: int | None) -> bool:
        umask = self._umask
        return gid is not None or umask is None or (mode & ~umask) != mode

    def _open_beneath(
        self, op: str, path: str, flags: int, mode: int = 0, *, dfd: int | None = None
    ) -> asyncio.Future[int]:
        """Open ``path`` confined to the root (or to ``dfd``); the root must be open."""
        eng = self.ring_engine()
        ring = eng.ring
        start = self._root_fd if dfd is None else dfd
        assert start is not None
        raw = os.fsencode(path or ".")
        if not flags & (os.O_CREAT | os.O_TMPFILE):
            mode = 0
        flags |= os.O_CLOEXEC

        def prep(o: Operation) -> None:
            ring.prep_openat2((o, 0), raw, flags, mode, _RESOLVE, dfd=start)

        def finish(results: list[int]) -> int:
            res = results[0]
            if res < 0:
                raise _open_error(op, path, -res)
            return res

        return eng.start(1, prep, finish, on_orphan=self._orphan_fds)

    def _orphan_temp(self, fd: int) -> None:
        """A created temp file nobody will receive: close it and its directory fd."""
        dfd = self._temp_dirs.pop(fd, None)
        self._close_soon(fd, *(() if dfd is None else (dfd,)))

    def _orphan_opened(self, res: Any) -> None:
        if isinstance(res, OpenedFile) and res.fd is not None:
            self._close_soon(res.fd)

    def _orphan_fds(self, results: list[int]) -> None:
        """An open whose waiter was cancelled: close what it opened."""
        for res in results:
            if res >= 0:
                self._close_soon(res)

    async def _open_at(
        self, op: str, path: str, flags: int, mode: int = 0, *, dfd: int | None = None
    ) -> int:
        """Await :meth:`_open_beneath`; the fd is closed if the caller is cancelled.

        (The result may arrive while the awaiting task is already cancelled but not yet
        resumed: the engine cannot see that, so the fd would be lost.)
        """
        fut = self._open_beneath(op, path, flags, mode, dfd=dfd)
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self._close_soon(fut.result())
            raise

    async def _open(self, op: str, path: str, flags: int, mode: int = 0) -> int:
        await self._root(create=bool(flags & os.O_CREAT))
        return await self._open_at(op, path, flags, mode)

    async def _open_dir(self, op: str, path: str) -> int:
        return await self._open(op, path, _DIR_FLAGS)

    async def _makedirs(self, op: str, path: str, perms: Perms) -> int:
        """Create directory ``path`` and missing parents; return its descriptor."""
        await self._root(create=True)
        try:
            return await self._open_at(op, path, _DIR_FLAGS)
        except FileNotFoundError:
            if not path:
                raise
        parent, _, name = path.rpartition("/")
        pfd = await self._makedirs(op, parent, perms)
        eng = self.ring_engine()
        mode = dir_mode(perms.mode)
        try:
            try:
                await eng.mkdir(os.fsencode(name), mode, dfd=pfd)
                created = True
            except FileExistsError:
                created = False
            fd = await self._open_at(op, path, _DIR_FLAGS)
        finally:
            self._close_soon(pfd)
        if created:
            try:
                await self._process_umask()
                if self._needs_fix(mode, perms.gid):
                    await self._helper(_fix_perms, fd, mode, perms.gid)
            except BaseException:
                self._close_soon(fd)
                raise
        return fd

    # ------------------------------------------------------------ reading

    def open_read(self, path: str, small_limit: int) -> asyncio.Future[OpenedFile]:
        try:
            return self._open_read(path, small_limit)
        except RuntimeError as exc:  # closed FS or engine
            return self._failed(exc)

    def _open_read(self, path: str, small_limit: int) -> asyncio.Future[OpenedFile]:
        eng = self.ring_engine()
        self.ring_opens += 1
        root = self._root_fd
        if root is None or not eng.direct_descriptors:
            return self._task(self._open_read_slow(path, small_limit), self._orphan_opened)
        return self._small_chain(eng, root, path, small_limit)

    def _small_chain(
        self, eng: UringEngine, root: int, path: str, small_limit: int
    ) -> asyncio.Future[OpenedFile]:
        """``openat2 -> read(small_limit + 1) -> close`` on a direct descriptor.

        A file of at most ``small_limit`` bytes is then read whole, in one submission,
        and no descriptor ever exists in the process.  A larger one is opened again for
        real (its first bytes were read for nothing, but are in the page cache now).
        """
        raw = os.fsencode(path or ".")
        buf = eng.take_buffer(small_limit + 1)
        out: asyncio.Future[OpenedFile] = asyncio.get_running_loop().create_future()

        def prep(op: Operation) -> None:
            self._prep_whole(eng, op, raw, root, buf)

        def finish(results: list[int]) -> Any:
            opened, nread, _closed = results
            try:
                if opened < 0:
                    raise _open_error("open", path, -opened)
                if nread < 0:
                    raise _oserror(-nread, path)
                if nread <= small_limit:
                    return OpenedFile(None, nread, ctypes.string_at(buf, nread))
            finally:
                eng.give_buffer(buf)
            big = self._task(self._open_big(path), self._orphan_opened)
            big.add_done_callback(lambda b: _relay(b, out, self._orphan_opened))
            return DEFERRED

        return eng.start(3, prep, finish, into=out)

    def read_small(
        self, paths: list[str], limit: int
    ) -> asyncio.Future[list[bytes | BaseException | None]]:
        """Read whole files of at most ``limit`` bytes: one ``openat2 -> read -> close``
        chain per path, all in one submission.  Per path: the bytes, None when the file is
        larger, or the ``OSError`` reading it raised.  Nothing stays open."""
        return self._task(self._read_small(paths, limit))

    async def _read_small(self, paths: list[str], limit: int) -> list[bytes | BaseException | None]:
        root = await self._root()
        eng = self.ring_engine()
        if not eng.direct_descriptors:
            return await super().read_small(paths, limit)
        self.ring_opens += len(paths)
        chains = [self._whole_chain(eng, root, path, limit) for path in paths]
        return list(await asyncio.gather(*chains, return_exceptions=True))

    def _whole_chain(
        self, eng: UringEngine, root: int, path: str, limit: int
    ) -> asyncio.Future[bytes | None]:
        """``openat2 -> read(limit + 1) -> close`` on a direct descriptor: the whole file,
        or None when it holds more than ``limit`` bytes."""
        raw = os.fsencode(path or ".")
        buf = eng.take_buffer(limit + 1)

        def prep(op: Operation) -> None:
            self._prep_whole(eng, op, raw, root, buf)

        def finish(results: list[int]) -> bytes | None:
            opened, nread, _closed = results
            try:
                if opened < 0:
                    raise _open_error("open", path, -opened)
                if nread < 0:
                    raise _oserror(-nread, path)
                return ctypes.string_at(buf, nread) if nread <= limit else None
            finally:
                eng.give_buffer(buf)

        return eng.start(3, prep, finish)

    @staticmethod
    def _prep_whole(
        eng: UringEngine, op: Operation, raw: bytes, root: int, buf: ctypes.Array[ctypes.c_char]
    ) -> None:
        """Queue ``openat2(slot) -> read(slot, buf) -> close(slot)`` as steps 0..2 of ``op``."""
        ring = eng.ring
        slot = eng.take_slot()
        assert slot is not None  # as many slots as SQEs may be in flight
        op.on_done = lambda _results: eng.give_slot(slot)
        ring.prep_openat2(
            (op, 0), raw, os.O_RDONLY, 0, _RESOLVE, dfd=root, file_slot=slot,
            sqe_flags=IOSQE_IO_LINK,
        )  # fmt: skip
        ring.prep_read((op, 1), slot, buf, 0, sqe_flags=IOSQE_FIXED_FILE | IOSQE_IO_HARDLINK)
        ring.prep_close_direct((op, 2), slot)

    async def _open_read_slow(self, path: str, small_limit: int) -> OpenedFile:
        """The first open (root not open yet), or a kernel without direct descriptors."""
        root = await self._root()
        eng = self.ring_engine()
        if eng.direct_descriptors:
            return await self._small_chain(eng, root, path, small_limit)
        fd = await self._open_at("open", path, os.O_RDONLY)
        ring = eng.ring
        buf = eng.take_buffer(small_limit + 1)
        statbuf = ctypes.create_string_buffer(256)

        def prep(op: Operation) -> None:
            ring.prep_read((op, 0), fd, buf, 0)
            ring.prep_statx((op, 1), b"", statbuf, dfd=fd, flags=AT_EMPTY_PATH)

        try:
            nread, sres = await eng.start(2, prep, list)
        except BaseException:
            self._close_soon(fd)
            raise
        try:
            if nread < 0 or sres < 0:
                self._close_soon(fd)
                raise _oserror(-(nread if nread < 0 else sres), path)
            if nread <= small_limit:
                self._close_soon(fd)
                return OpenedFile(None, nread, ctypes.string_at(buf, nread))
        finally:
            eng.give_buffer(buf)
        return OpenedFile(fd, parse_statx(statbuf).size, None)

    async def _open_big(self, path: str) -> OpenedFile:
        fd = await self._open_at("open", path, os.O_RDONLY)
        try:
            st = await self.ring_engine().fstat(fd)
        except BaseException:
            self._close_soon(fd)
            raise
        return OpenedFile(fd, st.size, None)

    def open_append(self, path: str) -> asyncio.Future[OpenedFile]:
        self.ring_opens += 1
        return self._task(self._open_append(path), self._orphan_opened)

    async def _open_append(self, path: str) -> OpenedFile:
        fd = await self._open("open", path, os.O_RDWR)
        try:
            st = await self.ring_engine().fstat(fd)
            if st.is_dir:  # (O_RDWR refuses directories already; belt and braces)
                raise IsADirectoryError(errno.EISDIR, "is a directory", path)
        except BaseException:
            self._close_soon(fd)
            raise
        return OpenedFile(fd, st.size, None)

    def read_now(self, fd: int, size: int, offset: int) -> bytes | asyncio.Future[bytes]:
        self.ring_reads += 1
        try:
            return self.ring_engine().read_now(fd, size, offset)
        except (RuntimeError, ValueError) as exc:
            return self._failed(exc)

    def pread(self, fd: int, size: int, offset: int) -> asyncio.Future[bytes]:
        self.ring_reads += 1
        try:
            return self.ring_engine().read_nowait(fd, size, offset)
        except (RuntimeError, ValueError) as exc:
            return self._failed(exc)

    # ------------------------------------------------------------ writing

    stages = True

    def write_temp(
        self, directory: str, temp_name: str, data: bytes, perms: Perms, policy: FsyncPolicy
    ) -> asyncio.Future[None]:
        return self._task(self._write_temp(directory, temp_name, data, perms, policy))

    async def _write_temp(
        self, directory: str, temp_name: str, data: bytes, perms: Perms, policy: FsyncPolicy
    ) -> None:
        """One chain ``openat2(O_CREAT) -> write -> fsync -> close`` on a direct
        descriptor where it can (the root is open, the umask leaves the mode alone, the
        data fits one write); else, or when the directory is missing or the write came
        short, the steps one by one.  The staging calls below resolve paths themselves:
        the names are given in a worker thread."""
        eng = self.ring_engine()
        root = self._root_fd
        if (
            root is not None
            and eng.direct_descriptors
            and not self._needs_fix(perms.mode, perms.gid)
            and 0 < len(data) <= _MAX_CHAIN_WRITE
            and await self._write_temp_chain(eng, root, directory, temp_name, data, perms, policy)
        ):
            return
        await self._write_temp_steps(directory, temp_name, data, perms, policy)

    async def _write_temp_chain(
        self,
        eng: UringEngine,
        root: int,
        directory: str,
        temp_name: str,
        data: bytes,
        perms: Perms,
        policy: FsyncPolicy,
    ) -> bool:
        """The one-chain form of :meth:`_write_temp`; False (nothing left behind) where
        the steps must do it instead."""
        path = paths.join(directory, temp_name)
        raw = os.fsencode(path)
        datasync = _file_sync_flags(policy)
        count = 3 if datasync is None else 4
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL  # (a direct descriptor refuses O_CLOEXEC)
        slot = eng.take_slot()
        if slot is None:
            return False

        def prep(op: Operation) -> None:
            ring = eng.ring
            op.on_done = lambda _results: eng.give_slot(slot)
            ring.prep_openat2(
                (op, 0), raw, flags, perms.mode, _RESOLVE, dfd=root, file_slot=slot,
                sqe_flags=IOSQE_IO_LINK,
            )  # fmt: skip
            last = IOSQE_FIXED_FILE | IOSQE_IO_HARDLINK  # the close runs whatever happened
            if datasync is None:
                ring.prep_write((op, 1), slot, data, 0, sqe_flags=last)
            else:
                ring.prep_write((op, 1), slot, data, 0, sqe_flags=IOSQE_FIXED_FILE | IOSQE_IO_LINK)
                ring.prep_fsync((op, 2), slot, datasync=datasync, sqe_flags=last)
            ring.prep_close_direct((op, count - 1), slot)

        self.ring_commits += 1
        results = await eng.start(count, prep, list)
        opened, written = results[0], results[1]
        synced = 0 if datasync is None else results[2]
        if opened < 0:
            if opened == -errno.ENOENT:  # a missing directory: the steps make it
                return False
            raise _open_error("create", path, -opened)
        if written == len(data) and synced >= 0:
            return True
        with contextlib.suppress(OSError):  # (the file was created: remove it)
            await eng.unlink(raw, dfd=root)
        if written < 0:
            raise _oserror(-written, path)
        if synced < 0 and written == len(data):
            raise _oserror(-synced, path)
        return False  # a short write: the steps write the rest

    async def _write_temp_steps(
        self, directory: str, temp_name: str, data: bytes, perms: Perms, policy: FsyncPolicy
    ) -> None:
        """``create``, then ``write -> fsync`` as one chain, then ``close``."""
        fd = await self.create_temp(directory, temp_name, perms)
        try:
            await self._write_and_sync(fd, data, 0, policy)
        except BaseException:
            await self.close([fd], (directory, temp_name))
            raise
        await self.close([fd])

    def _staging(self) -> tuple[Beneath, ThreadDirSyncer]:
        """Path resolution and directory fsyncs for the blocking staging calls, which
        run in worker threads (index jobs) and so cannot use the loop's ring."""
        with self._staging_lock:
            if self._staging_calls is None:
                self._staging_calls = (Beneath(self.root), ThreadDirSyncer())
            return self._staging_calls

    def name_now(self, directory: str, temp_name: str, final_name: str) -> None:
        name_staged(self._staging()[0], directory, temp_name, final_name)

    def unlink_now(self, directory: str, name: str) -> None:
        unlink_staged(self._staging()[0], directory, name)

    def sync_dir_now(self, directory: str, policy: FsyncPolicy) -> None:
        beneath, dirsync = self._staging()
        sync_staged_dir(beneath, dirsync, directory, policy)

    def create_temp(self, directory: str, temp_name: str, perms: Perms) -> asyncio.Future[int]:
        try:
            return self._create_temp(directory, temp_name, perms)
        except RuntimeError as exc:  # closed FS or engine
            return self._failed(exc)

    def _create_temp(self, directory: str, temp_name: str, perms: Perms) -> asyncio.Future[int]:
        eng = self.ring_engine()
        root = self._root_fd
        if root is None or self._needs_fix(perms.mode, perms.gid):
            return self._task(
                self._create_temp_slow(directory, temp_name, perms), self._orphan_temp
            )
        # One submission: open the directory (kept for the commit) and create the file.
        ring = eng.ring
        raw_dir = os.fsencode(directory or ".")
        raw_file = os.fsencode(paths.join(directory, temp_name))
        file_flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC

        def prep(op: Operation) -> None:
            ring.prep_openat2((op, 0), raw_dir, _DIR_FLAGS | os.O_CLOEXEC, 0, _RESOLVE, dfd=root)
            ring.prep_openat2((op, 1), raw_file, file_flags, perms.mode, _RESOLVE, dfd=root)

        out: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def finish(results: list[int]) -> Any:
            dres, fres = results
            if dres >= 0 and fres >= 0:
                self._temp_dirs[fres] = dres
                return fres
            if dres == -errno.ENOENT:  # the directory is missing: make it, then retry
                # (The two opens are not linked: if another create made the directory in
                # between, the file open found it and created the temp file.  Keep it.)
                made = None if fres < 0 else fres
                slow = self._task(
                    self._create_temp_slow(directory, temp_name, perms, made),
                    self._orphan_temp,
                )
                slow.add_done_callback(lambda s: _relay(s, out, self._orphan_temp))
                return DEFERRED
            self._orphan_fds(results)
            err = dres if dres < 0 else fres
            what = directory if dres < 0 else paths.join(directory, temp_name)
            raise _open_error("create", what, -err)

        return eng.start(2, prep, finish, on_orphan=self._orphan_fds, into=out)

    async def _create_temp_slow(
        self, directory: str, temp_name: str, perms: Perms, made: int | None = None
    ) -> int:
        """Create missing directories, then the temp file (``made``: already created,
        by a chain whose directory open failed; it is closed if this fails)."""
        try:
            dfd = await self._makedirs("create", directory, perms)
        except BaseException:
            if made is not None:
                self._close_soon(made)
            raise
        if made is not None:
            self._temp_dirs[made] = dfd
            return made
        try:
            fd = await self._open_at(
                "create", temp_name, os.O_RDWR | os.O_CREAT | os.O_EXCL, perms.mode, dfd=dfd
            )
        except BaseException:
            self._close_soon(dfd)
            raise
        try:
            await self._process_umask()
            if self._needs_fix(perms.mode, perms.gid):
                await self._helper(_fix_perms, fd, perms.mode, perms.gid)
        except BaseException:
            self._close_soon(fd)
            try:
                await self.ring_engine().unlink(os.fsencode(temp_name), dfd=dfd)
            finally:
                self._close_soon(dfd)
            raise
        self._temp_dirs[fd] = dfd
        return fd

    def create_spill(self, directory: str) -> asyncio.Future[int]:
        return self._task(self._create_spill(directory), self._close_soon)

    async def _create_spill(self, directory: str) -> int:
        try:
            return await self._open("write", directory, os.O_TMPFILE | os.O_RDWR, 0o600)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
        dfd = await self._open_dir("write", directory)
        try:
            name = paths.temp_name("spill", os.getpid())
            fd = await self._open_at(
                "write", name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600, dfd=dfd
            )
            try:
                await self.ring_engine().unlink(os.fsencode(name), dfd=dfd)
            except BaseException:
                self._close_soon(fd)
                raise
        finally:
            self._close_soon(dfd)
        return fd

    def pwrite(self, fd: int, chunks: list[bytes], offset: int) -> asyncio.Future[None]:
        return self._task(self._pwrite(fd, chunks, offset))

    async def _pwrite(self, fd: int, chunks: list[bytes], offset: int) -> None:
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if data:
            await self.ring_engine().write(fd, data, offset, force_async=True)

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
        self.ring_commits += 1
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        dfd = self._temp_dirs.get(fd)
        if dfd is None or not (replace or self._noreplace):
            return self._task(
                self._commit_slow(fd, dfd, directory, temp_name, final_name, replace, data,
                                  offset, policy)
            )  # fmt: skip
        out: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def after(written: int, noreplace_refused: bool) -> Any:
            """The chain is done: finish the commit, or hand over to a follow-up step."""
            if noreplace_refused or written < len(data):  # finish it step by step
                if noreplace_refused:  # (the data was written and synced by the chain)
                    self._noreplace = False
                    written = len(data)
                rest = self._task(
                    self._commit_slow(fd, dfd, directory, temp_name, final_name, replace,
                                      data[written:], offset + written, policy, True)
                )  # fmt: skip
                rest.add_done_callback(lambda r: _relay(r, out))
                return DEFERRED
            if chained or policy is FsyncPolicy.NEVER:
                self._committed(fd, dfd)
                return None
            waiter = self.dirsync.sync(directory, dfd, counted=True)

            def synced(w: asyncio.Future[None]) -> None:
                self._committed(fd, dfd)
                _relay(w, out)

            waiter.add_done_callback(synced)
            return DEFERRED

        try:
            eng = self.ring_engine()
            chained = policy is not FsyncPolicy.NEVER and self.dirsync.claim(directory)
            return self._commit_chain(
                eng, fd, dfd, directory, temp_name, final_name, replace, data, offset, policy,
                chained, out, after,
            )  # fmt: skip
        except RuntimeError as exc:  # closed FS or engine
            return self._failed(exc)

    def _commit_chain(
        self,
        eng: UringEngine,
        fd: int,
        dfd: int,
        directory: str,
        temp_name: str,
        final_name: str,
        replace: bool,
        data: bytes,
        offset: int,
        policy: FsyncPolicy,
        chained: bool,
        out: asyncio.Future[None],
        after: Callable[[int, bool], Any],
    ) -> asyncio.Future[None]:
        """``write -> fsync -> rename [-> fsync(dir)]`` as one linked chain, into ``out``.

        A fail-if-exists commit renames with ``RENAME_NOREPLACE`` (atomic, ``EEXIST`` if
        the name is taken).  Not ``linkat -> unlinkat``: the kernel does not count a
        failed name operation as a broken link, so the unlink would run after a failed
        link and destroy the temp file.  For the same reason nothing but the harmless
        directory fsync ever follows the rename.

        When the chain completed, ``after(written, noreplace_refused)`` decides the
        outcome: ``written < len(data)`` means a short write broke the chain and nothing
        after it ran; ``noreplace_refused`` that the filesystem refused
        ``RENAME_NOREPLACE`` (the data is written and synced then, the rename is still to
        do).  The first real error of the chain fails ``out``.
        """
        ring = eng.ring
        raw_tmp, raw_final = os.fsencode(temp_name), os.fsencode(final_name)
        datasync = _file_sync_flags(policy)
        count = (1 if data else 0) + (0 if datasync is None else 1) + 1 + (1 if chained else 0)
        rename_flags = 0 if replace else _RENAME_NOREPLACE
        link = IOSQE_IO_LINK
        dirsync = self.dirsync

        def prep(op: Operation) -> None:
            if chained:
                op.on_done = lambda _results: dirsync.release(directory)
            i = 0
            if data:
                ring.prep_write((op, i), fd, data, offset, sqe_flags=link | IOSQE_ASYNC)
                i += 1
            if datasync is not None:
                ring.prep_fsync((op, i), fd, datasync=datasync, sqe_flags=link)
                i += 1
            ring.prep_renameat(
                (op, i), raw_tmp, raw_final, old_dfd=dfd, new_dfd=dfd, flags=rename_flags,
                sqe_flags=link if chained else 0,
            )  # fmt: skip
            i += 1
            if chained:
                ring.prep_fsync((op, i), dfd)

        def finish(results: list[int]) -> Any:
            rest = results
            if data:
                written = results[0]
                if 0 <= written < len(data):
                    return after(written, False)
                rest = results[1:] if written >= 0 else results
            err = _chain_error(rest, paths.join(directory, final_name))
            if err is not None:
                renamed = rest[1 if datasync is not None else 0]
                if renamed == -errno.EINVAL and not replace and err.errno == errno.EINVAL:
                    return after(len(data), True)
                raise err
            return after(len(data), False)

        try:
            return eng.start(count, prep, finish, into=out)
        except BaseException:
            if chained:
                dirsync.release(directory)
            raise

    def _committed(self, fd: int, dfd: int) -> None:
        """After a successful commit the temp name is gone: the directory fd is not needed."""
        if self._temp_dirs.get(fd) == dfd:
            del self._temp_dirs[fd]
            self._close_soon(dfd)

    async def _commit_slow(
        self,
        fd: int,
        dfd: int | None,
        directory: str,
        temp_name: str,
        final_name: str,
        replace: bool,
        data: bytes,
        offset: int,
        policy: FsyncPolicy,
        counted: bool = False,
    ) -> None:
        """The commit step by step: after a short write, without ``RENAME_NOREPLACE``, or
        without a directory fd from the create.

        ``counted``: the fast path already counted this commit's directory-fsync request.
        """
        eng = self.ring_engine()
        owned = dfd is None
        if dfd is None:
            dfd = await self._open_dir("commit", directory)
        waiter: asyncio.Future[None] | None = None
        try:
            if data:
                await eng.write(fd, data, offset, force_async=True)
            datasync = _file_sync_flags(policy)
            if datasync is not None:
                await eng.fsync(fd, datasync)
            raw_tmp, raw_final = os.fsencode(temp_name), os.fsencode(final_name)
            await self._rename_into_place(eng, dfd, raw_tmp, raw_final, replace)
            if policy is not FsyncPolicy.NEVER:
                waiter = self.dirsync.sync(directory, dfd, counted=counted)
                await asyncio.shield(waiter)
        finally:
            if owned:
                if waiter is not None:
                    self._close_after(waiter, dfd)
                else:
                    self._close_soon(dfd)
        if not owned:
            self._committed(fd, dfd)

    async def _rename_into_place(
        self, eng: UringEngine, dfd: int, raw_tmp: bytes, raw_final: bytes, replace: bool
    ) -> None:
        """Rename the temp file to its final name (without replacing, unless ``replace``)."""
        if replace:
            await eng.rename(raw_tmp, raw_final, old_dfd=dfd, new_dfd=dfd)
            return
        if self._noreplace:
            ring = eng.ring

            def prep(op: Operation) -> None:
                ring.prep_renameat(
                    (op, 0), raw_tmp, raw_final, old_dfd=dfd, new_dfd=dfd,
                    flags=_RENAME_NOREPLACE,
                )  # fmt: skip

            (res,) = await eng.start(1, prep, list)
            if res >= 0:
                return
            if res != -errno.EINVAL:
                raise _oserror(-res, os.fsdecode(raw_final))
            self._noreplace = False
        # The Maildir way: link (EEXIST if taken), then drop the temp name.
        await eng.link(raw_tmp, raw_final, old_dfd=dfd, new_dfd=dfd)
        await eng.unlink(raw_tmp, dfd=dfd)

    def commit_append(
        self,
        fd: int,
        spill_fd: int | None,
        spill_len: int,
        chunks: list[bytes],
        policy: FsyncPolicy,
    ) -> asyncio.Future[int]:
        self.ring_commits += 1
        return self._task(self._commit_append(fd, spill_fd, spill_len, chunks, policy))

    async def _commit_append(
        self,
        fd: int,
        spill_fd: int | None,
        spill_len: int,
        chunks: list[bytes],
        policy: FsyncPolicy,
    ) -> int:
        eng = self.ring_engine()
        start = (await eng.fstat(fd)).size
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        try:
            end = start
            if spill_len:
                assert spill_fd is not None
                end = await self._copy_spill(spill_fd, fd, spill_len, end)
            end = await self._write_and_sync(fd, data, end, policy)
        except Exception:
            await self._truncate(fd, start)  # nothing of a failed commit stays behind
            raise
        if spill_len and spill_fd is not None:
            await self._truncate(spill_fd, 0)
        return end

    async def _copy_spill(self, src: int, dst: int, length: int, dst_offset: int) -> int:
        """Append the spill file's first ``length`` bytes to ``dst`` (read, then write)."""
        eng = self.ring_engine()
        src_offset = 0
        while length > 0:
            chunk = await eng.read(src, min(length, _COPY_CHUNK), src_offset)
            if not chunk:
                raise OSError(errno.EIO, "spill file shorter than recorded")
            await eng.write(dst, chunk, dst_offset, force_async=True)
            src_offset += len(chunk)
            dst_offset += len(chunk)
            length -= len(chunk)
        return dst_offset

    async def _write_and_sync(self, fd: int, data: bytes, offset: int, policy: FsyncPolicy) -> int:
        """``write -> fsync`` as one chain; returns the end offset."""
        eng = self.ring_engine()
        ring = eng.ring
        datasync = _file_sync_flags(policy)
        if not data:
            if datasync is not None:
                await eng.fsync(fd, datasync)
            return offset
        if datasync is None:
            await eng.write(fd, data, offset, force_async=True)
            return offset + len(data)

        def prep(op: Operation) -> None:
            ring.prep_write((op, 0), fd, data, offset, sqe_flags=IOSQE_IO_LINK | IOSQE_ASYNC)
            ring.prep_fsync((op, 1), fd, datasync=datasync)

        written, synced = await eng.start(2, prep, list)
        if 0 <= written < len(data):  # short write: the fsync was cancelled
            await eng.write(fd, data[written:], offset + written, force_async=True)
            await eng.fsync(fd, datasync)
        elif written < 0 or synced < 0:
            err = _chain_error([written, synced])
            assert err is not None
            raise err
        return offset + len(data)

    def truncate(self, fd: int, length: int) -> asyncio.Future[None]:
        return self._task(self._truncate(fd, length))

    async def _truncate(self, fd: int, length: int) -> None:
        eng = self.ring_engine()
        if not eng.supports(Op.FTRUNCATE):
            await self._helper(os.ftruncate, fd, length)
            return
        ring = eng.ring

        def prep(op: Operation) -> None:
            ring.prep_ftruncate((op, 0), fd, length)

        (res,) = await eng.start(1, prep, list)
        if res < 0:
            raise _oserror(-res)

    def close(self, fds: list[int], unlink: tuple[str, str] | None = None) -> asyncio.Future[None]:
        dfds = [self._temp_dirs.pop(fd) for fd in fds if fd in self._temp_dirs]
        eng = self._uring
        if self._closed and (eng is None or eng.closed):
            # A handle closed after its FS: no ring left.  Release the descriptors here;
            # a temp file stays for clean_temp (its directory fd is gone).
            for fd in [*fds, *dfds]:
                with contextlib.suppress(OSError):
                    os.close(fd)
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        try:
            return self._close(fds, dfds, unlink)
        except RuntimeError as exc:  # the engine broke
            for fd in [*fds, *dfds]:
                with contextlib.suppress(OSError):
                    os.close(fd)
            return self._failed(exc)

    def _close(
        self, fds: list[int], dfds: list[int], unlink: tuple[str, str] | None
    ) -> asyncio.Future[None]:
        eng = self.ring_engine()
        if unlink is not None and not dfds:
            return self._task(self._close_and_unlink(fds, unlink))
        ring = eng.ring
        raw_name = b"" if unlink is None else os.fsencode(unlink[1])
        count = len(fds) + len(dfds) + (1 if unlink is not None else 0)

        def prep(op: Operation) -> None:
            i = 0
            for fd in fds:
                ring.prep_close((op, i), fd)
                i += 1
            if unlink is not None:  # the temp file goes before its directory fd closes
                ring.prep_unlinkat((op, i), raw_name, dfd=dfds[0], sqe_flags=IOSQE_IO_HARDLINK)
                i += 1
            for dfd in dfds:
                ring.prep_close((op, i), dfd)
                i += 1

        def finish(results: list[int]) -> None:
            err = _chain_error(results)
            if err is not None:
                raise err

        return eng.start(count, prep, finish)

    async def _close_and_unlink(self, fds: list[int], unlink: tuple[str, str]) -> None:
        eng = self.ring_engine()
        for fd in fds:
            await eng.close(fd)
        directory, name = unlink
        dfd = await self._open_dir("close", directory)
        try:
            await eng.unlink(os.fsencode(name), dfd=dfd)
        finally:
            self._close_soon(dfd)

    # ----------------------------------------------------------- metadata

    def stat(self, path: str) -> asyncio.Future[FsStat]:
        return self._task(self._stat(path))

    async def _stat(self, path: str) -> FsStat:
        eng = self.ring_engine()
        root = await self._root()
        if not path:
            st = await eng.fstat(root)
            return FsStat(st.size, st.mtime, st.is_dir)
        fd = await self._open_at("stat", path, _O_PATH)
        ring = eng.ring
        buf = ctypes.create_string_buffer(256)

        def prep(op: Operation) -> None:
            ring.prep_statx((op, 0), b"", buf, dfd=fd, flags=AT_EMPTY_PATH,
                            sqe_flags=IOSQE_IO_HARDLINK)  # fmt: skip
            ring.prep_close((op, 1), fd)

        try:
            fut = eng.start(2, prep, list)
        except BaseException:  # not queued: the chain will not close it
            self._close_soon(fd)
            raise
        res, _closed = await fut
        if res < 0:
            raise _oserror(-res, path)
        st = parse_statx(buf)
        return FsStat(st.size, st.mtime, st.is_dir)

    def unlink(self, path: str, policy: FsyncPolicy) -> asyncio.Future[None]:
        return self._task(self._unlink(path, policy))

    async def _unlink(self, path: str, policy: FsyncPolicy) -> None:
        directory, name = paths.split(path)
        dfd = await self._open_dir("delete", directory)
        waiter: asyncio.Future[None] | None = None
        try:
            await self.ring_engine().unlink(os.fsencode(name), dfd=dfd)
            if policy is FsyncPolicy.ALWAYS:
                waiter = self.dirsync.sync(directory, dfd)
                await waiter
        finally:
            if waiter is not None:
                self._close_after(waiter, dfd)
            else:
                self._close_soon(dfd)

    def rename(self, src: str, dst: str, policy: FsyncPolicy) -> asyncio.Future[None]:
        return self._task(self._rename(src, dst, policy, False))

    def link(self, src: str, dst: str, policy: FsyncPolicy) -> asyncio.Future[None]:
        return self._task(self._rename(src, dst, policy, True))

    async def _rename(self, src: str, dst: str, policy: FsyncPolicy, link: bool) -> None:
        op = "link" if link else "rename"
        eng = self.ring_engine()
        s_dir, s_name = paths.split(src)
        d_dir, d_name = paths.split(dst)
        sfd = await self._open_dir(op, s_dir)
        waiters: list[tuple[asyncio.Future[None], int]] = []
        dfd: int | None = None
        try:
            dfd = await self._makedirs(op, d_dir, Perms())
            raw_s, raw_d = os.fsencode(s_name), os.fsencode(d_name)
            if link:
                await eng.link(raw_s, raw_d, old_dfd=sfd, new_dfd=dfd)
            else:
                await eng.rename(raw_s, raw_d, old_dfd=sfd, new_dfd=dfd)
            if policy is not FsyncPolicy.NEVER:
                waiters.append((self.dirsync.sync(d_dir, dfd), dfd))
            if not link and s_dir != d_dir and policy is FsyncPolicy.ALWAYS:
                waiters.append((self.dirsync.sync(s_dir, sfd), sfd))
            for waiter, _fd in waiters:
                await asyncio.shield(waiter)
        finally:
            for fd in (sfd, dfd):
                if fd is None:
                    continue
                pending = [w for w, wfd in waiters if wfd == fd and not w.done()]
                if pending:
                    self._close_after(pending[0], fd)
                else:
                    self._close_soon(fd)

    def mkdir(self, path: str, perms: Perms) -> asyncio.Future[None]:
        return self._task(self._mkdir(path, perms))

    async def _mkdir(self, path: str, perms: Perms) -> None:
        self._close_soon(await self._makedirs("mkdir", path, perms))

    def rmdir(self, path: str) -> asyncio.Future[None]:
        return self._task(self._rmdir(path))

    async def _rmdir(self, path: str) -> None:
        directory, name = paths.split(path)
        dfd = await self._open_dir("rmdir", directory)
        try:
            await self.ring_engine().rmdir(os.fsencode(name), dfd=dfd)
        finally:
            self._close_soon(dfd)

    def listdir(self, path: str, dirs: bool) -> asyncio.Future[list[str]]:
        return self._task(self._listdir(path, dirs))

    async def _listdir(self, path: str, dirs: bool) -> list[str]:
        try:
            dfd = await self._open_dir("iterate", path)
        except (FileNotFoundError, NotADirectoryError):
            return []
        try:
            return await self._helper(_scan, dfd, dirs)
        finally:
            self._close_soon(dfd)

    def clean_temp(self, path: str, older_than: float) -> asyncio.Future[list[str]]:
        return self._task(self._clean_temp(path, older_than))

    async def _clean_temp(self, path: str, older_than: float) -> list[str]:
        try:
            dfd = await self._open_dir("clean_temp", path)
        except FileNotFoundError:
            return []
        eng = self.ring_engine()
        removed: list[str] = []
        try:
            names = await self._helper(_scan_temp, dfd)
            now = time.time()
            for name in names:
                if paths.temp_owner_pid(name) is None:
                    continue
                raw = os.fsencode(name)
                try:
                    st = await eng.statx(raw, dfd=dfd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if not paths.stale_temp(name, now - st.mtime, older_than):
                    continue
                if stat_mod.S_ISDIR(st.mode):
                    continue
                try:
                    await eng.unlink(raw, dfd=dfd)
                except FileNotFoundError:
                    continue
                removed.append(name)
        finally:
            self._close_soon(dfd)
        return removed

    # ---------------------------------------------------------- lifecycle

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ring_reads": self.ring_reads,
            "ring_opens": self.ring_opens,
            "ring_commits": self.ring_commits,
            "dir_fsyncs": self.dirsync.fsyncs,
            "dir_fsync_requests": self.dirsync.requests,
            "dir_fsyncs_chained": self.dirsync.chained,
            "helper_jobs": self.helper_jobs,
        }
        eng = self._uring
        if eng is not None:
            ring = dataclasses.asdict(eng.stats)
            ring.update(
                in_flight=eng.in_flight,
                peak_in_flight=eng.peak_in_flight,
                max_in_flight=eng.max_in_flight,
                waiting=eng.waiting,
                direct_descriptors=eng.direct_descriptors,
            )
            out["ring"] = ring
        if self._pool is not None:
            out["helper_pool"] = self._pool.stats()
        return out

    async def aclose(self) -> None:
        """Finish this FS's background work, close its fds, leave the loop's ring.

        The ring itself is torn down by the last FS on the loop that closes.
        """
        if self._closed:
            return
        self._closed = True
        try:
            while self._tasks:
                await asyncio.wait(set(self._tasks))
            eng = self._uring
            if eng is not None and not eng.closed:
                fds = list(self._temp_dirs.values())
                self._temp_dirs.clear()
                if self._root_fd is not None:
                    fds.append(self._root_fd)
                    self._root_fd = None
                if fds:
                    ring = eng.ring

                    def prep(op: Operation) -> None:
                        for i, fd in enumerate(fds):
                            ring.prep_close((op, i), fd)

                    await eng.start(len(fds), prep, _ignore)
        finally:
            eng = self._uring
            if eng is not None:
                await _release_ring(eng)
            if self._pool is not None:
                self._pool.shutdown()
            if self._staging_calls is not None:
                self._staging_calls[0].close()


def uring_fs(
    root: str,
    *,
    io_threads: int = 2,
    uring_entries: int = 256,
    uring_max_in_flight: int | None = None,
    uring_reap_batch: int = 16,
    uring_direct_descriptors: bool = True,
    uring_page_cache_fast_path: bool = True,
    **options: Any,
) -> LocalFS:
    """The ``uring`` backend rooted at ``root`` (see :class:`LocalFS` for ``options``).

    Args:
        root: the FS root directory.
        io_threads: the most helper threads (directory listings and the like).
        uring_entries: ring size, when this FS is the first on its event loop.
        uring_max_in_flight: bound on SQEs in flight (default: the ring size).
        uring_reap_batch: completions handled per loop iteration.
        uring_direct_descriptors: read small files with one direct-descriptor chain.
        uring_page_cache_fast_path: copy data already in the page cache with one
            non-blocking call on the loop (``preadv(RWF_NOWAIT)``, ``openat2(RESOLVE_CACHED)``)
            instead of a ring round trip; False puts every read through the ring.
        **options: :class:`LocalFS` options (``fsync``, ``readahead``, ...).

    Raises:
        UringUnavailable: io_uring cannot be used here; ``reason`` says why.
    """
    # An immediate ring read costs about four RWF_NOWAIT preads: fewer per loop
    # iteration keep the time the loop spends on cached reads about the same as posix's.
    if not uring_page_cache_fast_path:
        options.setdefault("inline_reads_per_tick", 64)
    engine = UringFileEngine(
        root,
        entries=uring_entries,
        max_in_flight=uring_max_in_flight,
        reap_batch=uring_reap_batch,
        direct_descriptors=uring_direct_descriptors,
        io_threads=io_threads,
        page_cache_fast_path=uring_page_cache_fast_path,
    )
    return LocalFS(engine, **options)
