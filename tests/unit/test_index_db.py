"""IndexDB: SQLite off the loop, one queue per connection, jobs run back to back."""

from __future__ import annotations

import asyncio
import collections
import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from aiodbox.config import StorageConfig
from aiodbox.index import db as db_module
from aiodbox.index.db import WRITERS_LOCK_SUFFIX, IndexDB, sqlite_pool
from aiodbox.index.schema import migrate
from aiodbox.storage import Storage


def _make_table(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY, v TEXT)")


def _insert(k: int) -> Callable[[sqlite3.Connection], int]:
    def fn(conn: sqlite3.Connection) -> int:
        conn.execute("INSERT INTO t (k, v) VALUES (?, ?)", (k, f"v{k}"))
        return k

    return fn


def _keys(conn: sqlite3.Connection) -> list[int]:
    return [r[0] for r in conn.execute("SELECT k FROM t ORDER BY k")]


async def test_concurrent_writes_all_commit_and_are_visible_when_they_return(
    tmp_path: Path,
) -> None:
    db = await IndexDB.open(tmp_path / "index.sqlite")
    await db.write(_make_table)

    async def one(k: int) -> None:
        assert await db.write(_insert(k)) == k
        keys = await db.read(_keys)
        assert k in keys  # visible to the reader once write() returned

    await asyncio.gather(*(one(k) for k in range(50)))
    assert await db.read(_keys) == list(range(50))
    await db.close()


async def test_a_failing_write_is_rolled_back_alone(tmp_path: Path) -> None:
    db = await IndexDB.open(tmp_path / "index.sqlite")
    await db.write(_make_table)

    def half_then_fail(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t (k, v) VALUES (100, 'half')")
        raise ValueError("changed my mind")

    results = await asyncio.gather(
        db.write(_insert(1)),
        db.write(half_then_fail),
        db.write(_insert(2)),
        return_exceptions=True,
    )
    assert results[0] == 1 and results[2] == 2
    assert isinstance(results[1], ValueError)
    assert await db.read(_keys) == [1, 2]  # 100 never became visible
    # a constraint error inside SQLite: same, and the connection keeps working
    with pytest.raises(sqlite3.IntegrityError):
        await db.write(_insert(1))
    assert await db.write(_insert(3)) == 3
    assert await db.read(_keys) == [1, 2, 3]
    await db.close()


async def test_a_write_cancelled_before_it_ran_never_runs(tmp_path: Path) -> None:
    db = await IndexDB.open(tmp_path / "index.sqlite")
    await db.write(_make_table)
    gate = threading.Event()

    def blocker(conn: sqlite3.Connection) -> None:
        assert gate.wait(10)

    first = asyncio.ensure_future(db.write(blocker))
    second = asyncio.ensure_future(db.write(_insert(7)))
    await asyncio.sleep(0.05)
    second.cancel()
    await asyncio.sleep(0)
    gate.set()
    await first
    with pytest.raises(asyncio.CancelledError):
        await second
    assert await db.write(_insert(8)) == 8
    assert await db.read(_keys) == [8]
    await db.close()


async def test_reads_go_on_while_a_write_runs(tmp_path: Path) -> None:
    db = await IndexDB.open(tmp_path / "index.sqlite")
    await db.write(_make_table)
    await db.write(_insert(1))
    gate = threading.Event()

    def slow_write(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t (k, v) VALUES (2, 'x')")
        assert gate.wait(10)

    writing = asyncio.ensure_future(db.write(slow_write))
    await asyncio.sleep(0.05)
    assert await db.read(_keys) == [1]  # not blocked, and the write is not visible yet
    gate.set()
    await writing
    assert await db.read(_keys) == [1, 2]
    await db.close()


async def test_queued_jobs_run_back_to_back_in_one_pool_job(tmp_path: Path) -> None:
    """Jobs queued while one runs need no extra hand-off through the loop."""
    db = await IndexDB.open(tmp_path / "index.sqlite")
    await db.write(_make_table)
    pool = sqlite_pool()
    before = pool.stats()["submitted"]
    gate = threading.Event()

    def blocker(conn: sqlite3.Connection) -> None:
        assert gate.wait(10)

    first = asyncio.ensure_future(db.write(blocker))
    await asyncio.sleep(0.05)
    rest = [asyncio.ensure_future(db.write(_insert(k))) for k in range(20)]
    await asyncio.sleep(0)
    gate.set()
    await first
    assert await asyncio.gather(*rest) == list(range(20))
    assert pool.stats()["submitted"] - before == 1
    await db.close()


def _open_fds_to(path: Path) -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(path)):
            count += 1
    return count


async def test_idle_connections_close_and_reopen_on_the_next_job(tmp_path: Path) -> None:
    db = await IndexDB.open(tmp_path / "index.sqlite")
    db.idle_close_after = 0.05
    await db.write(_make_table)
    await db.write(_insert(1))
    before = await db.data_version()
    assert _open_fds_to(tmp_path) > 0
    await asyncio.sleep(0.3)
    await asyncio.sleep(0.05)  # the close jobs ran
    assert _open_fds_to(tmp_path) == 0  # both connections (and the -shm) are gone
    # The next jobs open them again, and see everything committed meanwhile.
    other = sqlite3.connect(tmp_path / "index.sqlite")
    other.execute("INSERT INTO t (k, v) VALUES (2, 'elsewhere')")
    other.commit()
    other.close()
    assert await db.read(_keys) == [1, 2]
    assert await db.write(_insert(3)) == 3
    assert await db.read(_keys) == [1, 2, 3]
    # A remembered data_version never matches one of a reopened connection.
    assert await db.data_version() != before
    await db.close()
    assert _open_fds_to(tmp_path) == 0


async def test_the_writer_is_opened_by_the_first_write_not_by_open(tmp_path: Path) -> None:
    # A session that only reads (log in, SELECT, idle) never pays for a writer.
    path = tmp_path / "index.sqlite"
    db = await IndexDB.open(path)
    reader_only = _open_fds_to(tmp_path)
    assert reader_only > 0
    assert await db.read(lambda c: c.execute("SELECT count(*) FROM sqlite_master").fetchone())
    assert _open_fds_to(tmp_path) == reader_only
    await db.write(_make_table)
    assert _open_fds_to(tmp_path) > reader_only  # the writer's own descriptor now
    assert await db.read(_keys) == []
    await db.close()
    assert _open_fds_to(tmp_path) == 0


async def test_a_busy_database_is_not_closed(tmp_path: Path) -> None:
    db = await IndexDB.open(tmp_path / "index.sqlite")
    db.idle_close_after = 0.1
    await db.write(_make_table)
    for k in range(10):  # a job every 40 ms: never idle for 100 ms
        await db.write(_insert(k))
        await asyncio.sleep(0.04)
    version = await db.data_version()
    assert await db.data_version() == version  # same reader connection throughout
    await db.close()


async def test_a_mailbox_view_notices_changes_across_a_reopened_reader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db_module, "IDLE_CLOSE_AFTER", 0.05)

    cfg = StorageConfig(
        format="sdbox", mail_root=tmp_path / "mail", index_root=tmp_path / "index", fs="posix"
    )
    storage = Storage(cfg)
    user = await storage.user("u")
    inbox = await user.open_mailbox("INBOX")
    await asyncio.sleep(0.3)
    assert _open_fds_to(tmp_path / "index") == 0
    # another process (here: another Storage) delivers a message
    other = Storage(cfg)
    other_user = await other.user("u")
    box = await other_user.open_mailbox("INBOX", load_view=False)
    tx = box.transaction()
    await tx.save(b"Subject: hi\r\n\r\nhello\r\n")
    await tx.commit()
    await box.close()
    await other_user.close()
    assert await inbox.sync() is True
    assert list(inbox.view.uids) == [1]
    await inbox.close()
    await user.close()


async def test_freed_memory_is_given_back_once_after_a_burst_of_idle_closes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_trim = db_module._malloc_trim
    if real_trim is None:
        pytest.skip("not glibc: there is no malloc_trim to call")
    calls: list[int] = []

    def spy(pad: int) -> int:  # the real malloc_trim, counted
        calls.append(pad)
        assert real_trim is not None
        return real_trim(pad)

    monkeypatch.setattr(db_module, "_malloc_trim", spy)
    monkeypatch.setattr(db_module, "TRIM_DELAY", 0.1)
    dbs = []
    for i in range(5):
        db = await IndexDB.open(tmp_path / f"u{i}" / "index.sqlite")
        db.idle_close_after = 0.05
        await db.write(_make_table)
        dbs.append(db)
    await asyncio.sleep(0.5)
    assert _open_fds_to(tmp_path) == 0
    assert calls == [0]  # five databases closed together: one trim
    for db in dbs:
        await db.close()


async def test_beyond_open_max_the_least_recently_used_database_disconnects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db_module, "OPEN_MAX", 2)
    monkeypatch.setattr(db_module, "_open_dbs", collections.OrderedDict())
    dbs = []
    for i in range(3):
        db = await IndexDB.open(tmp_path / f"u{i}" / "index.sqlite")
        await db.write(_make_table)
        await db.write(_insert(i))
        dbs.append(db)
    await dbs[1].read(_keys)  # u1 used more recently than u2... and u0 least of all
    await asyncio.sleep(0.05)  # the queued close ran
    assert _open_fds_to(tmp_path / "u0") == 0
    assert _open_fds_to(tmp_path / "u1") > 0
    assert _open_fds_to(tmp_path / "u2") > 0
    # The disconnected one works as before; reopening it pushes out the least recent (u2).
    assert await dbs[0].read(_keys) == [0]
    assert await dbs[0].write(_insert(10)) == 10
    await asyncio.sleep(0.05)
    assert _open_fds_to(tmp_path / "u0") > 0
    assert _open_fds_to(tmp_path / "u2") == 0
    assert await dbs[2].read(_keys) == [2]
    for db in dbs:
        await db.close()
    assert _open_fds_to(tmp_path) == 0


async def _queued_together(
    db: IndexDB, jobs: list[Callable[[sqlite3.Connection], Any]]
) -> list[Any]:
    """Queue ``jobs`` on the writer while it is busy with another one, so that they run
    as one group; return their outcomes (result or exception)."""
    gate = threading.Event()
    busy = asyncio.ensure_future(db.write(lambda conn: gate.wait(5)))
    await asyncio.sleep(0.05)  # the writer is inside the gate job
    futures = [asyncio.ensure_future(db.write(fn)) for fn in jobs]
    await asyncio.sleep(0)  # every job is queued
    gate.set()
    await busy
    return list(await asyncio.gather(*futures, return_exceptions=True))


def _raise(conn: sqlite3.Connection) -> None:
    conn.execute("INSERT INTO t (k, v) VALUES (100, 'undone')")
    raise ValueError("this job fails")


async def test_writes_queued_together_commit_together_and_a_failing_one_alone_is_undone(
    tmp_path: Path,
) -> None:
    db = await IndexDB.open(tmp_path / "index.sqlite")
    await db.write(_make_table)
    statements: list[str] = []

    def trace(conn: sqlite3.Connection) -> None:
        conn.set_trace_callback(statements.append)

    await db.write(trace)
    outcomes = await _queued_together(db, [_insert(1), _raise, _insert(3)])
    assert outcomes[0] == 1 and outcomes[2] == 3
    assert isinstance(outcomes[1], ValueError)
    assert await db.read(_keys) == [1, 3]  # the failing job's insert was undone alone
    # One transaction for the three, after the gate job's (the trace job's COMMIT, the
    # first statement traced, is the one before).
    assert statements.count("BEGIN IMMEDIATE") == 2
    assert statements.count("COMMIT") == 3
    group = statements[statements.index("BEGIN IMMEDIATE", 2) :]
    assert group[0] == "BEGIN IMMEDIATE" and group[-1] == "COMMIT"
    assert group.count("SAVEPOINT job") == 3 and "ROLLBACK TO job" in group
    await db.close()


async def test_before_commit_actions_run_once_per_key_before_the_group_commits(
    tmp_path: Path,
) -> None:
    db = await IndexDB.open(tmp_path / "index.sqlite")
    await db.write(_make_table)
    ran: list[tuple[str, list[int]]] = []
    path = str(tmp_path / "index.sqlite")

    def committed_keys() -> list[int]:  # what another connection sees: nothing yet
        with sqlite3.connect(path) as other:
            return [r[0] for r in other.execute("SELECT k FROM t ORDER BY k")]

    def job(k: int, key: str) -> Callable[[sqlite3.Connection], int]:
        def fn(conn: sqlite3.Connection) -> int:
            conn.execute("INSERT INTO t (k, v) VALUES (?, ?)", (k, "v"))
            db_module.before_commit(key, lambda: ran.append((key, committed_keys())))
            return k

        return fn

    outcomes = await _queued_together(db, [job(1, "dir-a"), job(2, "dir-a"), job(3, "dir-b")])
    assert outcomes == [1, 2, 3]
    assert ran == [("dir-a", []), ("dir-b", [])]  # once per key, all before the COMMIT
    assert await db.read(_keys) == [1, 2, 3]

    def failing_action() -> None:
        raise OSError(5, "simulated directory fsync failure")

    def job_with_failing_action(conn: sqlite3.Connection) -> int:
        conn.execute("INSERT INTO t (k, v) VALUES (5, 'v')")
        db_module.before_commit("dir-c", failing_action)
        return 5

    outcomes = await _queued_together(db, [_insert(4), job_with_failing_action])
    assert all(isinstance(o, OSError) for o in outcomes)  # the whole group failed
    assert await db.read(_keys) == [1, 2, 3]  # and nothing of it was committed
    assert await db.write(_insert(6)) == 6  # the writer goes on normally
    with pytest.raises(RuntimeError):
        db_module.before_commit("x", lambda: None)  # only inside a write job
    await db.close()


async def test_a_job_that_ends_the_group_transaction_fails_those_before_it_only(
    tmp_path: Path,
) -> None:
    # A job after which SQLite has no transaction left (an error that rolls everything
    # back): the group's earlier work is lost, so those jobs fail too; the jobs after it
    # run again in a new transaction.
    db = await IndexDB.open(tmp_path / "index.sqlite")
    await db.write(_make_table)

    def ends_everything(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t (k, v) VALUES (2, 'lost')")
        conn.execute("ROLLBACK")
        raise sqlite3.OperationalError("database or disk is full")

    outcomes = await _queued_together(db, [_insert(1), ends_everything, _insert(3)])
    assert isinstance(outcomes[0], sqlite3.OperationalError)
    assert isinstance(outcomes[1], sqlite3.OperationalError)
    assert outcomes[2] == 3
    assert await db.read(_keys) == [3]
    assert await db.write(_insert(4)) == 4  # the writer goes on normally
    await db.close()


async def test_a_group_whose_connection_broke_fails_and_the_next_write_reopens(
    tmp_path: Path,
) -> None:
    # Not even a ROLLBACK works on a broken connection: every job of the group gets an
    # error (none hangs), and the next write runs on a new connection.
    db = await IndexDB.open(tmp_path / "index.sqlite")
    await db.write(_make_table)

    def breaks_the_connection(conn: sqlite3.Connection) -> None:
        conn.close()

    outcomes = await asyncio.wait_for(
        _queued_together(db, [_insert(1), breaks_the_connection, _insert(3)]), 10
    )
    assert all(isinstance(o, sqlite3.Error) for o in outcomes), outcomes
    assert await db.write(_insert(4)) == 4
    assert await db.read(_keys) == [4]
    await db.close()


async def test_a_write_waits_for_the_writers_lock_another_process_holds(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    db = await IndexDB.open(path)
    await db.write(_make_table)
    lock_path = str(path) + WRITERS_LOCK_SUFFIX
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT)  # another process's writer
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        write = asyncio.ensure_future(db.write(_insert(1)))
        await asyncio.sleep(0.3)
        assert not write.done()
        fcntl.flock(fd, fcntl.LOCK_UN)
        assert await asyncio.wait_for(write, 10) == 1
        # ... and it let go of the lock again after its transaction.
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)
    assert await db.read(_keys) == [1]
    await db.close()


def test_many_connections_opening_a_new_database_at_once_all_succeed(tmp_path: Path) -> None:
    # Converting a new database to WAL gets "database is locked" at once (SQLite runs no
    # busy handler for it): with 16 threads opening each of 30 new databases together,
    # some open failed in 3 of 4 runs of this test before the fix.
    errors: list[str] = []
    for i in range(30):
        path = str(tmp_path / f"db{i}.sqlite")
        start = time.monotonic() + 0.05

        def open_one(path: str = path, start: float = start) -> None:
            while time.monotonic() < start:  # (spinning starts them closer than a barrier)
                pass
            try:
                conn = db_module._connect(path)
                migrate(conn)
                conn.close()
            except sqlite3.Error as e:
                errors.append(repr(e))

        threads = [threading.Thread(target=open_one) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []


class _LockedTwice:
    """A connection whose WAL conversion is refused twice (a stand-in: the real race is
    timing-dependent, see the test above)."""

    def __init__(self) -> None:
        self.sql: list[str] = []
        self.refusals = 2

    def execute(self, sql: str) -> _LockedTwice:
        self.sql.append(sql)
        self._mode = "delete"
        if sql == "PRAGMA journal_mode = WAL":
            if self.refusals:
                self.refusals -= 1
                raise sqlite3.OperationalError("database is locked")
            self._mode = "wal"
        return self

    def fetchone(self) -> tuple[str]:
        return (self._mode,)


def test_a_refused_wal_conversion_is_retried_and_other_errors_are_not() -> None:
    conn = _LockedTwice()
    db_module._use_wal(conn)  # type: ignore[arg-type]
    assert conn.sql.count("PRAGMA journal_mode = WAL") == 3

    class Broken(_LockedTwice):
        def execute(self, sql: str) -> _LockedTwice:
            raise sqlite3.OperationalError("disk I/O error")

    with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
        db_module._use_wal(Broken())  # type: ignore[arg-type]
