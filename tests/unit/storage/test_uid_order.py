"""Saved messages become visible in UID order (RFC 3501 §2.3.1.1), whatever order their
transactions finish their data in: a session that was told about UID n never sees a
lower UID appear after it."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from aiodbox.storage import mailbox as mailbox_module

from .storage_testlib import make_storage, simple_message


@pytest.mark.parametrize("fmt", ["sdbox", "mdbox"])
async def test_a_later_uid_waits_for_an_earlier_one_still_writing(tmp_path: Path, fmt: str) -> None:
    storage, _ = make_storage(tmp_path, fmt, "posix")
    user = await storage.user("u")
    view_box = await user.open_mailbox("INBOX")  # a session's shared view
    view = view_box.view
    fmt_obj = user.format
    original = fmt_obj.commit_saves
    gate = asyncio.Event()
    calls = 0

    async def first_one_slow(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            await gate.wait()  # the transaction that reserved UID 1 is still writing
        return await original(*args)

    fmt_obj.commit_saves = first_one_slow  # type: ignore[method-assign]
    slow = view_box.transaction()
    await slow.save(simple_message(1))
    fast = view_box.transaction()
    await fast.save(simple_message(2))
    slow_commit = asyncio.ensure_future(slow.commit())
    while calls < 1:
        await asyncio.sleep(0.005)
    fast_commit = asyncio.ensure_future(fast.commit())
    seen: list[list[int]] = []
    for _ in range(20):  # UID 2's data is durable long before UID 1's
        await asyncio.sleep(0.01)
        await view_box.sync()
        seen.append(list(view.uids))
    assert not fast_commit.done(), "UID 2 became visible while UID 1 was still pending"
    assert all(s == [] for s in seen)
    gate.set()
    assert (await slow_commit).saved_uids == [1]
    assert (await fast_commit).saved_uids == [2]
    await view_box.sync()
    assert list(view.uids) == [1, 2]
    fmt_obj.commit_saves = original  # type: ignore[method-assign]
    await view_box.close()
    await user.close()


async def test_a_failed_save_does_not_hold_back_the_ones_after_it(tmp_path: Path) -> None:
    storage, _ = make_storage(tmp_path, "sdbox", "posix")
    user = await storage.user("u")
    box = await user.open_mailbox("INBOX")
    fmt_obj = user.format
    original = fmt_obj.commit_saves
    gate = asyncio.Event()
    calls = 0

    async def first_one_fails(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            await gate.wait()
            raise OSError(5, "simulated I/O error")
        return await original(*args)

    fmt_obj.commit_saves = first_one_fails  # type: ignore[method-assign]
    failing = box.transaction()
    await failing.save(simple_message(1))
    later = box.transaction()
    await later.save(simple_message(2))
    failing_commit = asyncio.ensure_future(failing.commit())
    while calls < 1:
        await asyncio.sleep(0.005)
    later_commit = asyncio.ensure_future(later.commit())
    await asyncio.sleep(0.05)
    assert not later_commit.done()
    gate.set()
    with pytest.raises(OSError):
        await failing_commit
    assert (await asyncio.wait_for(later_commit, 2)).saved_uids == [2]
    fmt_obj.commit_saves = original  # type: ignore[method-assign]
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
