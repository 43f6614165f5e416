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
"""

from __future__ import annotations

import asyncio
import collections
import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from aiodbox.fs.backends.workers import WorkerPool
from aiodbox.index.changes import watch_directory
from aiodbox.index.schema import migrate

T = TypeVar("T")

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


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


class _Serial:
    """The jobs of one connection, run in order, back to back, in one pool job at a time.

    With ``transactions`` (the writer), each job runs inside ``BEGIN IMMEDIATE`` …
    ``COMMIT`` (``ROLLBACK`` if it raises), and its result is delivered after the commit.
    (Sharing one transaction among the jobs queued together, each in a savepoint, was
    tried: with four sessions saving to one user it made no measurable difference.)
    """

    def __init__(self, conn: sqlite3.Connection, *, transactions: bool = False) -> None:
        self.conn = conn
        self.transactions = transactions
        self._jobs: collections.deque[_Job] = collections.deque()
        self._lock = threading.Lock()
        self._running = False

    def run(
        self, fn: Callable[[sqlite3.Connection], T], *, outside_transaction: bool = False
    ) -> asyncio.Future[T]:
        """Queue ``fn(conn)``; the future resolves with its result when it has run.

        A job whose future was cancelled before it started is not run.
        ``outside_transaction``: no transaction around this job of a writer.
        """
        pool = sqlite_pool()
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        with self._lock:
            self._jobs.append((fn, future, self.transactions and not outside_transaction))
            start = not self._running
            self._running = True
        if start:
            pool.submit(self._drain, pool)
        return future

    def _drain(self, pool: WorkerPool) -> None:
        """Run queued jobs until none is left (in a pool thread)."""
        conn = self.conn
        while True:
            with self._lock:
                if not self._jobs:
                    self._running = False
                    return
                fn, future, transaction = self._jobs.popleft()
            if future.cancelled():
                continue
            try:
                if transaction:
                    conn.execute("BEGIN IMMEDIATE")
                    try:
                        result = fn(conn)
                        conn.execute("COMMIT")
                    except BaseException:
                        if conn.in_transaction:
                            conn.execute("ROLLBACK")
                        raise
                else:
                    result = fn(conn)
            except BaseException as e:  # delivered to the awaiting coroutine
                pool.complete(future, None, e)
            else:
                pool.complete(future, result, None)


_Job = tuple[Callable[[sqlite3.Connection], Any], "asyncio.Future[Any]", bool]


class IndexDB:
    """One user's index database; see the module docstring."""

    def __init__(self, path: Path, writer: sqlite3.Connection, reader: sqlite3.Connection) -> None:
        self.path = path
        self._writer = _Serial(writer, transactions=True)
        self._reader = _Serial(reader)
        self._closed = False
        self._changes = watch_directory(str(path.parent))

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

    @classmethod
    async def open(cls, path: Path) -> IndexDB:
        """Open (creating and migrating as needed) the database at ``path``."""

        def opening() -> tuple[sqlite3.Connection, sqlite3.Connection]:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            writer = _connect(str(path))
            try:
                migrate(writer)
                reader = _connect(str(path))
            except BaseException:
                writer.close()
                raise
            return writer, reader

        writer, reader = await sqlite_pool().submit(opening)
        return cls(path, writer, reader)

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` on the reader connection, off the loop; return its result."""
        return await self._reader.run(fn)

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` in a ``BEGIN IMMEDIATE`` transaction, off the loop.

        The transaction commits if ``fn`` returns and rolls back if it raises.  The
        change is visible to all readers when this returns.
        """

        return await self._writer.run(fn)

    async def data_version(self) -> int:
        """``PRAGMA data_version`` of the reader: changes when any other connection commits."""

        def version(conn: sqlite3.Connection) -> int:
            return int(conn.execute("PRAGMA data_version").fetchone()[0])

        return await self.read(version)

    async def close(self) -> None:
        """Close both connections (waits for jobs in progress)."""
        if self._closed:
            return
        self._closed = True
        if self._changes is not None:
            self._changes.close()
        # Queued last on each connection: jobs already queued run first.
        await asyncio.gather(
            self._writer.run(sqlite3.Connection.close, outside_transaction=True),
            self._reader.run(sqlite3.Connection.close),
        )


def pid_alive(pid: int) -> bool:
    """True if a process with ``pid`` exists (used to judge pending saves)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
