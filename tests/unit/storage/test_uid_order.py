"""Saved messages become visible in UID order (RFC 3501 §2.3.1.1), whatever order their
transactions finish their data in: a session that was told about UID n never sees a
lower UID appear after it.

These tests are about UIDs *reserved* before the data is written (streamed sdbox files,
imports, copies).  Staged saves take their UIDs in the index job that makes them
visible; here they are turned off (``_reserved_uids_only``), and their ordering against
reserved ones is tested in test_sdbox_small_save.py."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from aiodbox.storage import formats as formats_module
from aiodbox.storage import mailbox as mailbox_module

from .storage_testlib import make_storage, simple_message


@pytest.fixture(autouse=True)
def _reserved_uids_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(formats_module.MdboxFormat, "stage_saves", _no_staging)
    monkeypatch.setattr(formats_module.SdboxFormat, "stage_saves", _no_staging)


async def _no_staging(*args: Any) -> None:
    return None


class _FirstDataCommitHeld:
    """Holds the first transaction's data commit (``commit_saves``) until ``release``,
    as a slow disk would; with ``fail`` it then fails instead of committing."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fmt_obj: Any, *, fail: bool) -> None:
        self.gate = asyncio.Event()
        self.calls = 0
        original = fmt_obj.commit_saves

        async def held(*args: Any) -> Any:
            self.calls += 1
            if self.calls == 1:
                await self.gate.wait()  # the transaction that reserved UID 1
                if fail:
                    raise OSError(5, "simulated I/O error")
            return await original(*args)

        monkeypatch.setattr(fmt_obj, "commit_saves", held)

    async def start(self, first: Any, second: Any) -> tuple[asyncio.Future[Any], ...]:
        """Commit ``first`` (it reserves UID 1, then is held), then ``second``."""
        first_commit = asyncio.ensure_future(first.commit())
        while self.calls < 1:
            await asyncio.sleep(0.005)
        return first_commit, asyncio.ensure_future(second.commit())

    def release(self) -> None:
        self.gate.set()


@pytest.mark.parametrize("fmt", ["sdbox", "mdbox"])
async def test_a_later_uid_waits_for_an_earlier_one_still_writing(
    tmp_path: Path, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage, _ = make_storage(tmp_path, fmt, "posix")
    user = await storage.user("u")
    view_box = await user.open_mailbox("INBOX")  # a session's shared view
    view = view_box.view
    held = _FirstDataCommitHeld(monkeypatch, user.format, fail=False)
    slow = view_box.transaction()
    await slow.save(simple_message(1))
    fast = view_box.transaction()
    await fast.save(simple_message(2))
    slow_commit, fast_commit = await held.start(slow, fast)
    seen: list[list[int]] = []
    for _ in range(20):  # UID 2's data is durable long before UID 1's
        await asyncio.sleep(0.01)
        await view_box.sync()
        seen.append(list(view.uids))
    assert not fast_commit.done(), "UID 2 became visible while UID 1 was still pending"
    assert all(s == [] for s in seen)
    held.release()
    assert (await slow_commit).saved_uids == [1]
    assert (await fast_commit).saved_uids == [2]
    await view_box.sync()
    assert list(view.uids) == [1, 2]
    await view_box.close()
    await user.close()


async def test_a_failed_save_does_not_hold_back_the_ones_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage, _ = make_storage(tmp_path, "sdbox", "posix")
    user = await storage.user("u")
    box = await user.open_mailbox("INBOX")
    held = _FirstDataCommitHeld(monkeypatch, user.format, fail=True)
    failing = box.transaction()
    await failing.save(simple_message(1))
    later = box.transaction()
    await later.save(simple_message(2))
    failing_commit, later_commit = await held.start(failing, later)
    await asyncio.sleep(0.05)
    assert not later_commit.done()
    held.release()
    with pytest.raises(OSError):
        await failing_commit
    assert (await asyncio.wait_for(later_commit, 2)).saved_uids == [2]
    await box.close()
    await user.close()


async def test_a_lower_reservation_of_another_live_process_is_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage, _ = make_storage(tmp_path, "mdbox", "posix")
    user = await storage.user("u")
    box = await user.open_mailbox("INBOX")
    mid = box.info.id
    monkeypatch.setattr(mailbox_module, "OTHER_PROCESS_WAIT_LIMIT", 5.0)

    # Another process (our parent: alive) reserved UID 1 and is still writing it.
    def reserve_elsewhere(conn: sqlite3.Connection) -> int:
        conn.execute("UPDATE mailboxes SET uidnext = uidnext + 1 WHERE id = ?", (mid,))
        cur = conn.execute(
            "INSERT INTO pending (mailbox_id, uid, count, pid, started) VALUES (?, 1, 1, ?, ?)",
            (mid, os.getppid(), time.time()),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    row = await user.db.write(reserve_elsewhere)
    tx = box.transaction()
    await tx.save(simple_message(2))
    commit = asyncio.ensure_future(tx.commit())
    await asyncio.sleep(0.3)
    assert not commit.done()
    # That process finishes (here: gives up its reservation).
    await user.db.write(lambda c: c.execute("DELETE FROM pending WHERE id = ?", (row,)))
    assert (await asyncio.wait_for(commit, 2)).saved_uids == [2]

    # A reservation of a process that is gone holds nothing back.
    child = subprocess.Popen(["true"])
    child.wait()
    dead = child.pid

    def reserve_dead(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE mailboxes SET uidnext = uidnext + 1 WHERE id = ?", (mid,))
        conn.execute(
            "INSERT INTO pending (mailbox_id, uid, count, pid, started) VALUES (?, 3, 1, ?, ?)",
            (mid, dead, time.time()),
        )

    await user.db.write(reserve_dead)
    tx = box.transaction()
    await tx.save(simple_message(4))
    assert (await asyncio.wait_for(tx.commit(), 2)).saved_uids == [4]
    await box.close()
    await user.close()


async def test_a_commit_waiting_for_another_process_goes_ahead_when_that_process_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The waiting commit is woken by the other process's index write (inotify), not by
    # its retry pause: with the pause at 30 s, only the wake-up lets it finish in time.
    storage, _ = make_storage(tmp_path, "sdbox", "posix")
    user = await storage.user("u")
    box = await user.open_mailbox("INBOX")
    mid = box.info.id
    monkeypatch.setattr(mailbox_module, "OTHER_PROCESS_WAIT_LIMIT", 60.0)
    monkeypatch.setattr(mailbox_module, "RETRY_FIRST_PAUSE", 30.0)
    monkeypatch.setattr(mailbox_module, "RETRY_MAX_PAUSE", 30.0)
    index = str(user.db.path)

    def other_process(sql: str, *args: Any) -> int:  # its own connection, as a process has
        conn = sqlite3.connect(index, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            cur = conn.execute(sql, args)
            conn.execute("COMMIT")
            return cur.lastrowid or 0
        finally:
            conn.close()

    await asyncio.to_thread(
        other_process, "UPDATE mailboxes SET uidnext = uidnext + 1 WHERE id = ?", mid
    )
    row = await asyncio.to_thread(
        other_process,
        "INSERT INTO pending (mailbox_id, uid, count, pid, started) VALUES (?, 1, 1, ?, ?)",
        mid,
        os.getppid(),  # alive
        time.time(),
    )
    tx = box.transaction()
    await tx.save(simple_message(2))
    commit = asyncio.ensure_future(tx.commit())
    await asyncio.sleep(0.3)
    assert not commit.done()  # UID 1 is still being saved
    await asyncio.to_thread(other_process, "DELETE FROM pending WHERE id = ?", row)
    assert (await asyncio.wait_for(commit, 10)).saved_uids == [2]
    await box.close()
    await user.close()


async def test_a_transaction_saving_and_copying_into_one_mailbox_does_not_wait_for_itself(
    tmp_path: Path,
) -> None:
    storage, _ = make_storage(tmp_path, "sdbox", "posix")
    user = await storage.user("u")
    box = await user.open_mailbox("INBOX")
    tx = box.transaction()
    await tx.save(simple_message(1))
    assert (await tx.commit()).saved_uids == [1]
    tx = box.transaction()
    await tx.save(simple_message(2))
    await tx.copy([1], box)
    result = await asyncio.wait_for(tx.commit(), 5)
    assert result.saved_uids == [2]
    assert result.copied == [(1, 3)]
    await box.sync()
    assert list(box.view.uids) == [1, 2, 3]
    await box.close()
    await user.close()


@pytest.mark.parametrize("fmt", ["sdbox", "mdbox"])
async def test_a_later_index_job_queued_behind_a_deferred_one_stays_behind(
    tmp_path: Path, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A later transaction queues its index job as soon as the earlier one queued its
    # own (the writer runs them in order).  If the earlier job then cannot go ahead (here:
    # it is told a live other process holds lower UIDs, which is gone a moment later),
    # the later job, which runs right after it, must not go ahead either: the earlier
    # transaction's pending row is live in this process.
    storage, _ = make_storage(tmp_path, fmt, "posix")
    user = await storage.user("u")
    view_box = await user.open_mailbox("INBOX")
    original = mailbox_module._lower_reservations_pending
    answers: list[tuple[list[tuple[int, int]], bool]] = []

    def checked(conn: sqlite3.Connection, turns: Any, own: Any, live: Any) -> bool:
        if not answers:  # the first check: UID 1's job, deferred once
            answers.append((list(turns), True))
            return True
        result = original(conn, turns, own, live)
        answers.append((list(turns), result))
        return result

    monkeypatch.setattr(mailbox_module, "_lower_reservations_pending", checked)
    first = view_box.transaction()
    await first.save(simple_message(1))
    second = view_box.transaction()
    await second.save(simple_message(2))
    results = await asyncio.gather(first.commit(), second.commit())
    assert [r.saved_uids for r in results] == [[1], [2]]
    first_uids = [turns[0][1] for turns, _ in answers]
    # UID 2's job ran right after UID 1's deferred one, and saw UID 1 still pending.
    assert first_uids[:2] == [1, 2] and answers[1][1] is True, answers
    # Neither went ahead before UID 1 did.
    went_ahead = [u for u, (_, held) in zip(first_uids, answers, strict=True) if not held]
    assert went_ahead[0] == 1
    await view_box.sync()
    assert list(view_box.view.uids) == [1, 2]
    await view_box.close()
    await user.close()


def test_which_pending_rows_hold_back_an_index_job(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "t.sqlite")
    conn.execute("CREATE TABLE pending (id INTEGER PRIMARY KEY, mailbox_id, uid, pid, started)")
    dead = subprocess.Popen(["true"])
    dead.wait()
    now = time.time()
    rows = [
        (1, 7, 1, os.getpid(), now),  # this process, live transaction
        (2, 7, 2, os.getpid(), now),  # this process, given up / leftover
        (3, 7, 3, dead.pid, now),  # a dead process
        (4, 7, 4, os.getppid(), now - 3600),  # a live process, but stale
        (5, 8, 1, os.getppid(), now),  # another mailbox
        (6, 7, 9, os.getpid(), now),  # the job's own row
    ]
    conn.executemany("INSERT INTO pending VALUES (?, ?, ?, ?, ?)", rows)
    check = mailbox_module._lower_reservations_pending
    turns = [(7, 10)]
    assert check(conn, turns, frozenset({6}), {1, 6}) is True
    assert check(conn, turns, frozenset({6}), {6}) is False
    assert check(conn, [(7, 1)], frozenset(), {1}) is False  # nothing below UID 1
    conn.execute("INSERT INTO pending VALUES (7, 7, 5, ?, ?)", (os.getppid(), now))
    assert check(conn, turns, frozenset({6}), set()) is True  # a live other process
    conn.close()
