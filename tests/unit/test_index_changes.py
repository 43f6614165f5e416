"""The index change watcher: writes by other processes are noticed without SQLite."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from aiodbox.config import StorageConfig
from aiodbox.index.changes import watch_directory
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
