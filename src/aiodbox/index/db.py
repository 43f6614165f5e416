"""SQLite access that never runs on the event loop.

Theory of operation
-------------------
Every SQLite call runs on a small process-wide pool of threads (``sqlite_pool()``, the
same batched :class:`~aiodbox.fs.backends.workers.WorkerPool` the posix backend uses).
A database has two connections: a writer and a reader, each with its own queue of jobs
(:class:`_Serial`).  A connection runs its jobs one after another inside one pool job,
so it is never used by two threads at once, and jobs queued meanwhile run back to back
without a round trip through the loop between them (with several sessions saving to one
user, that round trip used to leave the writer idle most of the time).  Each job's
result reaches the loop as soon as it is done.  Reads go on while a write is in progress
(WAL mode).

``write(fn)`` runs ``fn(conn)`` inside ``BEGIN IMMEDIATE`` … ``COMMIT``: across processes
SQLite serialises writers, and a busy database is waited for in the worker thread
(``busy_timeout``), never on the loop.  The change is visible to every reader, in this
process and others, when ``write`` returns.  ``data_version()`` is the cheap way to notice
that *another* connection (another process) committed something.

*Idle connections are closed.*  An open SQLite connection costs about 70 KiB (schema,
page cache, the mapped ``-shm``), and a server holds one user per idle IMAP connection.
A user's sessions need SQLite only when something changed (the index directory is
watched, see :mod:`.changes`), so after ``idle_close_after`` seconds without a job both
connections are closed (a job queued behind the close), and the next job opens them
again in its worker thread.  The writer is not opened with the database (the reader
runs the schema migration) but by the first write: a session that only reads (log in,
SELECT, idle) never holds one.  Values of ``PRAGMA data_version`` are comparable only
within one connection, so :func:`read_data_version` tags them with the connection
they came from: a reopened connection never matches a remembered value.

*At most ``OPEN_MAX`` databases keep connections open per process.*  A server with
thousands of users logged in at once would otherwise hold two connections per user until
they idle out.  When one more database opens its connections, the least recently used
one closes its own (behind its queued jobs, exactly as an idle close); its next job opens
them again.  An active user pays a reopen (a few hundred microseconds, in a worker thread)
only when more than ``OPEN_MAX`` users were active since its last job.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import fcntl
import functools
import itertools
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from aiodbox.fs.backends.workers import WorkerPool
from aiodbox.index.changes import LIST_MARKER, watch_directory
from aiodbox.index.schema import migrate

T = TypeVar("T")
log = logging.getLogger("aiodbox.index")

_POOL: WorkerPool | None = None
_POOL_LOOP: asyncio.AbstractEventLoop | None = None
BUSY_TIMEOUT_MS = 30_000


def sqlite_pool() -> WorkerPool:
    """The process-wide pool of SQLite threads (one per event loop)."""
    global _POOL, _POOL_LOOP
    loop = asyncio.get_running_loop()
    if _POOL is None or _POOL_LOOP is not loop or _POOL.closed:
        if _POOL is not None:
            _POOL.shutdown()
        _POOL = WorkerPool(4, name="aiodbox-sqlite")
        _POOL_LOOP = loop
    return _POOL


IDLE_CLOSE_AFTER = 10.0
"""Seconds without a job after which a database's connections are closed."""

OPEN_MAX = 16
"""Databases whose connections stay open at once, per process (least recently used
beyond it are closed; see the module docstring)."""

_open_dbs: collections.OrderedDict[int, weakref.ref[IndexDB]] = collections.OrderedDict()
"""Databases with open (or opening) connections, least recently used first."""

_connections_made = itertools.count(1)


class _Connection(sqlite3.Connection):
    """A connection that knows its number (see :func:`read_data_version`)."""

    number = 0


def read_data_version(conn: sqlite3.Connection) -> int:
    """``PRAGMA data_version`` of ``conn``, made unique to this connection.

    Equal results mean no other connection committed in between; results of different
    connections (a connection reopened after idling) are never equal.
    """
    version = int(conn.execute("PRAGMA data_version").fetchone()[0])
    return (getattr(conn, "number", 0) << 40) | version


def _use_wal(conn: sqlite3.Connection) -> None:
    """Put the database in WAL mode, which is kept in the file: only a new database is
    converted.  The conversion needs the database to itself, and SQLite returns "database
    is locked" for it at once instead of running the busy handler: when several processes
    open a new user's index at the same moment (the first login of a user reaching two
    workers), all but one used to fail.  So the mode is read first, and the conversion
    retried until it or another connection's succeeded (within ``BUSY_TIMEOUT_MS``)."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    pause = 0.001
    while True:
        try:
            for sql in ("PRAGMA journal_mode", "PRAGMA journal_mode = WAL"):
                if str(conn.execute(sql).fetchone()[0]).lower() == "wal":
                    return
            refused = sqlite3.OperationalError("could not switch the index to WAL mode")
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) and "busy" not in str(e):
                raise
            refused = e
        if time.monotonic() > deadline:
            raise refused
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, timeout=30, factory=_Connection
    )
    conn.number = next(_connections_made)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    _use_wal(conn)
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


class _Serial:
    """The jobs of one connection, run in order, back to back, in one pool job at a time.

    With ``transactions`` (the writer), the jobs queued together (up to ``GROUP_MAX``)
    run inside one ``BEGIN IMMEDIATE`` … ``COMMIT``, each in a savepoint (rolled back
    alone if it raises), and their results are delivered after the commit.  With four
    sessions saving to one user the writer is the busiest part of a save: a
    ``BEGIN``/``COMMIT`` pair cost about as much as a job's own work.
    """

    def __init__(
        self,
        opener: Callable[[], sqlite3.Connection],
        conn: sqlite3.Connection | None = None,
        *,
        transactions: bool = False,
        lock_path: str | None = None,
    ) -> None:
        self.opener = opener
        self.conn = conn  # None while closed: the next job opens it
        self.transactions = transactions
        self.lock_path = lock_path
        self._lock_fd: int | None = None
        # (A list, not a deque: a queue is a few jobs long, and an empty deque costs
        # 600 bytes, twice per user logged in.)
        self._jobs: list[_Job] = []
        self._lock = threading.Lock()
        self._running = False

    def run(
        self, fn: Callable[[sqlite3.Connection], T], *, outside_transaction: bool = False
    ) -> asyncio.Future[T]:
        """Queue ``fn(conn)``; the future resolves with its result when it has run.

        A job whose future was cancelled before it started is not run.
        ``outside_transaction``: no transaction around this job of a writer.
        """
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue((fn, future, self.transactions and not outside_transaction))
        return future

    def _queue(self, job: _Job) -> None:
        pool = sqlite_pool()
        with self._lock:
            self._jobs.append(job)
            start = not self._running
            self._running = True
        if start:
            pool.submit(self._drain, pool)

    def close_when_idle(self) -> asyncio.Future[None]:
        """Queue closing the connection (a later job opens it again)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue((None, future, False))
        return future

    def _drain(self, pool: WorkerPool) -> None:
        """Run queued jobs until none is left (in a pool thread)."""
        while True:
            with self._lock:
                if not self._jobs:
                    self._running = False
                    return
                n = 1
                if self._jobs[0][2]:  # and the transaction jobs queued right behind it
                    while n < len(self._jobs) and n < GROUP_MAX and self._jobs[n][2]:
                        n += 1
                group = self._jobs[:n]
                del self._jobs[:n]
            live = [(fn, future) for fn, future, _ in group if not future.cancelled()]
            if not live:
                continue
            if group[0][2]:
                self._run_transactions(pool, live)
            else:
                self._run_plain(pool, *live[0])

    def _connection(self) -> sqlite3.Connection:
        conn = self.conn
        if conn is None:
            conn = self.conn = self.opener()
        return conn

    def _run_plain(
        self,
        pool: WorkerPool,
        fn: Callable[[sqlite3.Connection], Any] | None,
        future: asyncio.Future[Any],
    ) -> None:
        try:
            if fn is None:  # close (if open)
                conn, self.conn = self.conn, None
                lock_fd, self._lock_fd = self._lock_fd, None
                if lock_fd is not None:
                    os.close(lock_fd)
                if conn is not None:
                    conn.close()
                result = None
            else:
                result = fn(self._connection())
        except BaseException as e:  # delivered to the awaiting coroutine
            pool.complete(future, None, e)
        else:
            pool.complete(future, result, None)

    def _run_transactions(
        self,
        pool: WorkerPool,
        jobs: list[tuple[Callable[[sqlite3.Connection], Any] | None, asyncio.Future[Any]]],
    ) -> None:
        """Run ``jobs`` in one ``BEGIN IMMEDIATE`` … ``COMMIT`` (group commit), each in a
        savepoint when there are several, so a job that raises undoes only itself.
        The jobs' :func:`before_commit` actions run just before the ``COMMIT``.
        Every result is delivered after the ``COMMIT``: the changes are visible then.

        The group holds the writers' lock file (``flock``) meanwhile: another process's
        writer waits for it in the kernel and starts the moment it is released.  SQLite's
        own wait for a busy database polls, sleeping 1, 2, 5 … ms between tries, and two
        server processes saving to one user made it sleep on almost every save."""
        fd = self._writers_lock()
        try:
            self._run_group(pool, jobs)
        finally:
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def _writers_lock(self) -> int | None:
        """Take the lock file; None where it cannot be used (SQLite's locking still
        serialises the writers then, only slower; this connection stops trying)."""
        if self.lock_path is None:
            return None
        try:
            if self._lock_fd is None:
                self._lock_fd = os.open(
                    self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
                )
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        except OSError as e:
            log.warning("cannot lock %s (%s): writers wait the slow way", self.lock_path, e)
            self.lock_path = None
            return None
        return self._lock_fd

    def _run_group(
        self,
        pool: WorkerPool,
        jobs: list[tuple[Callable[[sqlite3.Connection], Any] | None, asyncio.Future[Any]]],
    ) -> None:
        try:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
        except BaseException as e:
            for _fn, future in jobs:
                pool.complete(future, None, e)
            return
        actions: dict[object, Callable[[], None]] = {}
        _group.actions = actions
        try:
            self._run_jobs(pool, conn, jobs, actions)
        finally:
            _group.actions = None

    def _run_jobs(
        self,
        pool: WorkerPool,
        conn: sqlite3.Connection,
        jobs: list[tuple[Callable[[sqlite3.Connection], Any] | None, asyncio.Future[Any]]],
        actions: dict[object, Callable[[], None]],
    ) -> None:
        outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        try:
            single = len(jobs) == 1
            for i, (fn, future) in enumerate(jobs):
                assert fn is not None
                if future.cancelled():  # (while an earlier job of the group ran)
                    continue
                if single:
                    try:
                        outcomes.append((future, fn(conn), None))
                    except BaseException as e:
                        outcomes.append((future, None, e))
                    break
                try:
                    conn.execute("SAVEPOINT job")
                    result = fn(conn)
                    conn.execute("RELEASE job")
                except BaseException as e:
                    if not _undo_savepoint(conn):  # the whole transaction is gone
                        self._fail_group(pool, outcomes, e, jobs[i + 1 :])
                        pool.complete(future, None, e)
                        return
                    outcomes.append((future, None, e))
                else:
                    outcomes.append((future, result, None))
            if all(e is not None for _f, _r, e in outcomes):
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            else:
                try:
                    for action in actions.values():
                        action()
                    conn.execute("COMMIT")
                except BaseException as e:
                    outcomes = [(f, None, err or e) for f, _r, err in outcomes]
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
        except BaseException as e:  # ROLLBACK failed: start again on a new connection
            self.conn = None
            with contextlib.suppress(sqlite3.Error):
                conn.close()
            outcomes = [(f, None, err or e) for f, _r, err in outcomes]
            delivered = {id(f) for f, _r, _e in outcomes}
            outcomes += [(f, None, e) for _fn, f in jobs if id(f) not in delivered]
        for future, result, error in outcomes:
            pool.complete(future, result, error)

    def _fail_group(
        self,
        pool: WorkerPool,
        done: list[tuple[asyncio.Future[Any], Any, BaseException | None]],
        error: BaseException,
        rest: list[tuple[Callable[[sqlite3.Connection], Any] | None, asyncio.Future[Any]]],
    ) -> None:
        """The group's transaction is gone: what it did is lost (those jobs fail with
        ``error``), and the jobs not run yet go back to the front of the queue."""
        for future, _result, own in done:
            pool.complete(future, None, own or error)
        with self._lock:
            self._jobs[:0] = [(fn, future, True) for fn, future in rest]


class _Group(threading.local):
    actions: dict[object, Callable[[], None]] | None = None


_group = _Group()


def before_commit(key: object, action: Callable[[], None]) -> None:
    """From inside a :meth:`IndexDB.write` job: run ``action`` (blocking, in the writer
    thread) after every job of the group ran and before its ``COMMIT``; jobs of one group
    that pass the same ``key`` share one run.  If it raises, nothing of the group is
    committed and every job of it fails with that error.

    A store uses it to make the files its jobs named durable (one directory fsync for
    the group) before the rows that point at them are."""
    actions = _group.actions
    if actions is None:
        raise RuntimeError("before_commit outside an index write job")
    actions.setdefault(key, action)


def _undo_savepoint(conn: sqlite3.Connection) -> bool:
    """Roll back to the job's savepoint; False if the whole transaction is gone."""
    if not conn.in_transaction:
        return False
    try:
        conn.execute("ROLLBACK TO job")
        conn.execute("RELEASE job")
    except sqlite3.Error:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        return False
    return True


WRITERS_LOCK_SUFFIX = "-writers.lock"
"""Next to the database: held by a process's writer while its transaction runs."""

GROUP_MAX = 16
"""Transaction jobs of one connection run in one SQLite transaction at most."""


_Job = tuple[Callable[[sqlite3.Connection], Any] | None, "asyncio.Future[Any]", bool]
"""(what to run, or None to close the connection; its future; inside a transaction)"""


class IndexDB:
    """One user's index database; see the module docstring."""

    def __init__(
        self, path: Path, writer: sqlite3.Connection | None, reader: sqlite3.Connection
    ) -> None:
        self.path = path
        opener = functools.partial(_connect, str(path))
        self._writer = _Serial(
            opener, writer, transactions=True, lock_path=str(path) + WRITERS_LOCK_SUFFIX
        )
        self._reader = _Serial(opener, reader)
        self._closed = False
        self._changes = watch_directory(str(path.parent))
        self.idle_close_after = IDLE_CLOSE_AFTER
        self._last_job = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        self._connected = True
        _note_open(self)

    @property
    def change_generation(self) -> int | None:
        """Grows whenever any process wrote to this index (see :mod:`.changes`).

        Equal values mean nothing was committed in between, so ``data_version`` need not
        be asked; None means changes cannot be watched here (ask every time).
        """
        changes = self._changes
        if changes is None or not changes.alive:
            return None
        return changes.current()

    async def wait_for_write(self, generation: int | None, timeout: float) -> None:
        """Return once any process wrote to this index since :attr:`change_generation`
        was ``generation``, or after ``timeout`` seconds (at once if it already did; the
        whole timeout where changes cannot be watched)."""
        changes = self._changes
        if generation is None or changes is None or not changes.alive:
            await asyncio.sleep(timeout)
            return
        await changes.wait_past(generation, timeout)

    @property
    def list_generation(self) -> int | None:
        """Grows whenever any process changed the mailbox list and said so with
        :meth:`list_changed`; None where changes cannot be watched (never cache)."""
        changes = self._changes
        if changes is None or not changes.alive:
            return None
        return changes.current_list()

    async def list_changed(self) -> None:
        """Tell every process (this one too) that a committed write changed the mailbox
        list: writes the marker file (in a worker thread) and returns once that is done,
        so that a :attr:`list_generation` asked afterwards has grown."""
        marker = self.path.parent / LIST_MARKER
        await sqlite_pool().submit(_touch, marker)

    @classmethod
    async def open(cls, path: Path) -> IndexDB:
        """Open (creating and migrating as needed) the database at ``path``."""

        def opening() -> sqlite3.Connection:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            # The reader runs the migration: many sessions only read (a logged-in
            # client idling in its INBOX), and the writer (about 70 KiB) is opened by
            # the first write.
            reader = _connect(str(path))
            try:
                migrate(reader)
            except BaseException:
                reader.close()
                raise
            return reader

        reader = await sqlite_pool().submit(opening)
        return cls(path, None, reader)

    def _used(self) -> None:
        """A job is being queued: (re)arm the idle close."""
        loop = asyncio.get_running_loop()
        self._last_job = loop.time()
        self._connected = True
        _note_open(self)
        if self._idle_timer is None and not self._closed:
            self._idle_timer = loop.call_later(self.idle_close_after, self._close_if_idle)

    def _close_if_idle(self) -> None:
        self._idle_timer = None
        if self._closed or not self._connected:
            return
        loop = asyncio.get_running_loop()
        left = self._last_job + self.idle_close_after - loop.time()
        if left > 0:
            self._idle_timer = loop.call_later(left, self._close_if_idle)
            return
        self._disconnect()

    def _disconnect(self) -> None:
        """Queue closing both connections (behind queued jobs; the next job reopens)."""
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        self._connected = False
        _open_dbs.pop(id(self), None)
        for serial in (self._writer, self._reader):
            serial.close_when_idle().add_done_callback(_log_close_failure)
        _give_memory_back_soon()

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` on the reader connection, off the loop; return its result."""
        self._used()
        return await self._reader.run(fn)

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` in a ``BEGIN IMMEDIATE`` transaction, off the loop.

        The transaction commits if ``fn`` returns and rolls back if it raises.  The
        change is visible to all readers when this returns.
        """
        self._used()
        return await self._writer.run(fn)

    async def data_version(self) -> int:
        """:func:`read_data_version` of the reader: changes when any other connection
        commits (and when the reader was reopened)."""
        return await self.read(read_data_version)

    async def close(self) -> None:
        """Close both connections (waits for jobs in progress)."""
        if self._closed:
            return
        self._closed = True
        _open_dbs.pop(id(self), None)
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if self._changes is not None:
            self._changes.close()
        # Queued last on each connection: jobs already queued run first.
        await asyncio.gather(self._writer.close_when_idle(), self._reader.close_when_idle())


def _touch(marker: Path) -> None:
    try:
        with open(marker, "ab") as f:
            f.write(b".")
            if f.tell() > 4096:  # (a write is what inotify reports; the content is unused)
                f.truncate(0)
    except OSError as e:  # the change itself is committed: report, do not fail it
        log.error(
            "could not write %s (%s): other processes may go on using mailbox names "
            "they remembered before this change",
            marker,
            e,
        )


def _note_open(db: IndexDB) -> None:
    """``db`` has (or is about to have) open connections and was just used: make it the
    most recently used, and disconnect the least recently used beyond ``OPEN_MAX``."""
    key = id(db)
    ref = _open_dbs.get(key)
    if ref is not None and ref() is db:
        _open_dbs.move_to_end(key)
        return
    _open_dbs[key] = weakref.ref(db)
    while len(_open_dbs) > OPEN_MAX:
        _key, ref = _open_dbs.popitem(last=False)
        victim = ref()
        # A database of another (finished) loop cannot queue a close here: just forget it.
        if victim is not None and not victim._closed and victim._loop is db._loop:
            victim._disconnect()


TRIM_DELAY = 1.0
"""Seconds after the last idle close before freed memory is given back."""

_malloc_trim: Callable[[int], int] | None = None
try:
    _malloc_trim = ctypes.CDLL(None).malloc_trim
except (OSError, AttributeError):  # not glibc
    pass
_trim_timer: asyncio.TimerHandle | None = None
_trim_loop: asyncio.AbstractEventLoop | None = None


def _give_memory_back_soon() -> None:
    """Return freed heap pages to the kernel (glibc ``malloc_trim``) once closing settles.

    A closed connection's memory (pages, schema, lookaside) lies between allocations that
    stay, so ``free`` alone keeps it resident; trimming releases every free page.  Idle
    connections tend to close in bursts (users that logged in together): the trim runs
    once, in a pool thread, ``TRIM_DELAY`` after the last close of the burst was queued.
    """
    global _trim_timer, _trim_loop
    if _malloc_trim is None:
        return
    loop = asyncio.get_running_loop()
    if _trim_timer is not None and _trim_loop is loop:
        _trim_timer.cancel()  # (a timer of a loop closed meanwhile is just forgotten)
    _trim_timer = loop.call_later(TRIM_DELAY, _trim)
    _trim_loop = loop


def _trim() -> None:
    global _trim_timer
    _trim_timer = None
    assert _malloc_trim is not None
    sqlite_pool().submit(_malloc_trim, 0).add_done_callback(_log_close_failure)


def _log_close_failure(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("closing idle index connections failed: %s", future.exception())
