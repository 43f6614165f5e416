"""The index change watcher: writes by other processes are noticed without SQLite."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path

import pytest

from aiodbox.config import StorageConfig
from aiodbox.index.changes import DirectoryChanges, watch_directory
from aiodbox.storage import Storage


async def test_a_write_bumps_the_generation_at_once(tmp_path: Path) -> None:
    changes = watch_directory(str(tmp_path))
    assert changes is not None
    before = changes.current()
    assert changes.current() == before  # nothing happened
    await asyncio.to_thread((tmp_path / "index.sqlite-wal").write_bytes, b"x")
    assert changes.current() > before  # seen without waiting for the loop
    later = changes.current()
    await asyncio.to_thread((tmp_path / "other-file").write_bytes, b"x")
    await asyncio.to_thread((tmp_path / "index.sqlite-shm").write_bytes, b"x")
    assert changes.current() == later  # not an index write (or only read marks)
    changes.close()


async def test_a_waiter_wakes_when_the_index_is_written(tmp_path: Path) -> None:
    changes = watch_directory(str(tmp_path))
    assert changes is not None
    seen = changes.current()
    waiting = asyncio.ensure_future(changes.wait_past(seen, 60))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await asyncio.to_thread((tmp_path / "index.sqlite-wal").write_bytes, b"x")
    await asyncio.wait_for(waiting, 10)  # woken by the write, not by the 60 s timeout
    # A generation already past is not waited for; an unchanged one waits the timeout.
    await asyncio.wait_for(changes.wait_past(seen, 60), 1)
    await changes.wait_past(changes.current(), 0.01)
    changes.close()


async def test_sync_skips_sqlite_until_another_process_commits(tmp_path: Path) -> None:
    cfg = StorageConfig(
        format="sdbox", mail_root=tmp_path / "mail", index_root=tmp_path / "index", fs="memory"
    )
    st = Storage(cfg)
    user = await st.user("u")
    inbox = await user.open_mailbox("INBOX")
    await inbox.sync()
    calls = 0
    original = user.db.data_version

    async def counting() -> int:
        nonlocal calls
        calls += 1
        return await original()

    user.db.data_version = counting  # type: ignore[method-assign]
    for _ in range(20):
        assert await inbox.sync() is False
    assert calls == 0

    def other_process_commits() -> None:  # another connection = another process for SQLite
        conn = sqlite3.connect(tmp_path / "index" / "u" / "index.sqlite")
        with conn:
            conn.execute(
                "UPDATE mailboxes SET highestmodseq = highestmodseq + 1 WHERE name = 'INBOX'"
            )
        conn.close()

    await asyncio.to_thread(other_process_commits)
    await inbox.sync()
    assert calls == 1
    await inbox.close()
    await st.close()


async def test_without_inotify_every_sync_asks_sqlite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIODBOX_NO_INOTIFY", "1")
    cfg = StorageConfig(
        format="sdbox", mail_root=tmp_path / "mail", index_root=tmp_path / "index", fs="memory"
    )
    st = Storage(cfg)
    user = await st.user("u")
    assert user.db.change_generation is None
    inbox = await user.open_mailbox("INBOX")
    calls = 0
    original = user.db.data_version

    async def counting() -> int:
        nonlocal calls
        calls += 1
        return await original()

    user.db.data_version = counting  # type: ignore[method-assign]
    for _ in range(3):
        await inbox.sync()
    assert calls == 3
    await inbox.close()
    await st.close()


def test_watchers_give_their_inotify_descriptor_back(tmp_path: Path) -> None:
    """inotify instances are limited per user (often 128): a loop must not keep one."""

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    async def watch_and_forget() -> DirectoryChanges | None:
        return watch_directory(str(tmp_path))

    baseline = open_fds()
    leftovers = []
    for _ in range(200):  # more loops than the default max_user_instances
        leftovers.append(asyncio.run(watch_and_forget()))
    assert all(c is not None for c in leftovers)

    async def still_works() -> bool:
        c = watch_directory(str(tmp_path))
        assert c is not None
        before = c.current()
        await asyncio.to_thread((tmp_path / "index.sqlite").write_bytes, b"x")
        changed = c.current() > before
        c.close()
        return changed

    assert asyncio.run(still_works())
    assert open_fds() <= baseline + 1
    assert not any(c is not None and c.alive for c in leftovers)
