"""sdbox: a message announced small is built in memory and written by one FS call at
commit; one that outgrows its size hint is streamed like a large one.

On a local disk such a message is staged: written whole under a temp name first, then
one index job takes the UID, names the file after it and inserts the row (the directory
fsynced before its ``COMMIT``).  These tests use the bare posix backend: a wrapper FS
does not stage, and the other storage tests keep covering the regular path."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from aiodbox.config import StorageConfig
from aiodbox.dbox.file_write import SdboxInMemory
from aiodbox.fs.backends import local as local_module
from aiodbox.fs.backends.posix_threads import ThreadEngine
from aiodbox.storage import Storage, User
from aiodbox.storage import mailbox as mailbox_module
from aiodbox.storage.formats import SMALL_SAVE_MAX
from aiodbox.storage.fsck import check, repair
from aiodbox.storage.mailbox import Mailbox

from .storage_testlib import mailbox_bodies, simple_message


def _storage(tmp_path: Path) -> Storage:
    return Storage(
        StorageConfig(
            format="sdbox",
            mail_root=tmp_path / "mail",
            index_root=tmp_path / "index",
            fs="posix",
            fsync="always",
        )
    )


def _jobs(storage: Storage) -> int:
    """FS jobs submitted so far (the posix engine's worker pool)."""
    engine = storage.fs.engine  # type: ignore[attr-defined]
    assert isinstance(engine, ThreadEngine)
    return engine.pool.stats()["submitted"]


@pytest.fixture
async def inbox(tmp_path: Path) -> AsyncIterator[tuple[User, Mailbox]]:
    """A user of a fresh posix sdbox storage and its INBOX (view loaded)."""
    storage = _storage(tmp_path)
    user = await storage.user("u")
    box = await user.open_mailbox("INBOX")
    yield user, box
    await box.close()
    await storage.close()


async def test_a_small_message_is_written_with_one_fs_job_at_commit(tmp_path: Path) -> None:
    storage = _storage(tmp_path)
    user = await storage.user("u")
    box = await user.open_mailbox("INBOX", load_view=False)
    await box.save(simple_message(0))  # (the mailbox's directory exists after this one)
    data = simple_message(1, body_size=4000)
    before = _jobs(storage)
    tx = box.transaction()
    await tx.save(data)
    assert _jobs(storage) == before  # nothing written before the commit
    assert (await tx.commit()).saved_uids == [2]
    assert _jobs(storage) == before + 1  # create, write, fsync, close: one job (staged)
    await box.close()
    assert (await mailbox_bodies(storage))[2] == data
    await storage.close()


async def test_a_message_outgrowing_its_size_hint_is_streamed_whole(tmp_path: Path) -> None:
    storage = _storage(tmp_path)
    user = await storage.user("u")
    box = await user.open_mailbox("INBOX", load_view=False)
    chunk = b"x" * 8190 + b"\r\n"
    n = SMALL_SAVE_MAX // len(chunk) * 3
    data = b"Subject: big\r\n\r\n" + chunk * n

    async def chunks() -> AsyncIterator[bytes]:
        yield data[:16]
        for _ in range(n):
            yield chunk

    before = _jobs(storage)
    tx = box.transaction()
    await tx.save(chunks(), size_hint=100)  # a hint far too small
    assert _jobs(storage) > before  # it turned into a streamed file on the way
    assert (await tx.commit()).saved_uids == [1]
    await box.close()
    assert await mailbox_bodies(storage) == {1: data}
    await storage.close()


def _files(user: User, box: Mailbox) -> list[str]:
    """The message files and temp files in the mailbox's directory on disk."""
    root = Path(user.storage.config.mail_root)
    directory = root / user.mailbox_dir(box.info.guid)
    names = os.listdir(directory) if directory.exists() else []
    return sorted(n for n in names if n != "dbox-box")


async def _read(box: Mailbox, uid: int) -> bytes:
    msg = await box.open_message(await box.record(uid))
    try:
        return b"".join([c async for c in msg.open_body()])
    finally:
        await msg.aclose()


async def _pending_rows(user: User) -> list[Any]:
    return await user.db.read(lambda c: c.execute("SELECT * FROM pending").fetchall())


def _count_index_writes(user: User) -> list[int]:
    """Count ``user``'s index write jobs from now on (in the returned one-item list)."""
    count = [0]
    original = user.db.write

    async def counted(fn: Any) -> Any:
        count[0] += 1
        return await original(fn)

    user.db.write = counted  # type: ignore[method-assign]
    return count


async def test_a_small_save_is_named_and_indexed_by_one_index_job(
    inbox: tuple[User, Mailbox],
) -> None:
    user, box = inbox
    writes = _count_index_writes(user)
    tx = box.transaction()
    await tx.save(simple_message(1), flags=0, keywords=["$Label1"])
    await tx.save(simple_message(2))
    assert _files(user, box) == []  # nothing written before the commit
    result = await tx.commit()
    assert result.saved_uids == [1, 2]
    assert writes == [1]  # no reservation before the data: one index job in all
    assert _files(user, box) == ["u.1", "u.2"]  # and no temp name left
    assert await _pending_rows(user) == []
    await box.sync()
    assert list(box.view.uids) == [1, 2]
    assert await _read(box, 1) == simple_message(1)
    assert (await box.records([1]))[0].keywords == ("$Label1",)
    assert (await check(user)).ok


async def test_a_large_save_is_not_staged(inbox: tuple[User, Mailbox]) -> None:
    user, box = inbox
    big = simple_message(1, body_size=SMALL_SAVE_MAX + 1000)
    writes = _count_index_writes(user)
    tx = box.transaction()
    await tx.save(big)
    assert (await tx.commit()).saved_uids == [1]
    assert writes == [2]  # the UID reserved first, then the row inserted
    assert await _read(box, 1) == big


class _HeldDataCommit:
    """Holds the first regular (reserved-UID) data commit until ``release``; with
    ``fail`` it then fails instead."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fmt: Any, *, fail: bool) -> None:
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()
        original = fmt.commit_saves

        async def held(*args: Any) -> Any:
            self.entered.set()
            await self.gate.wait()
            if fail:
                raise OSError(5, "simulated I/O error")
            return await original(*args)

        monkeypatch.setattr(fmt, "commit_saves", held)


@pytest.mark.parametrize("fail", [False, True], ids=["lower-commits", "lower-fails"])
async def test_a_staged_save_waits_for_a_lower_reservation_still_writing(
    inbox: tuple[User, Mailbox], monkeypatch: pytest.MonkeyPatch, fail: bool
) -> None:
    user, box = inbox
    held = _HeldDataCommit(monkeypatch, user.format, fail=fail)
    large = box.transaction()  # streamed: reserves UID 1 first, then writes
    await large.save(simple_message(1, body_size=SMALL_SAVE_MAX + 1000))
    large_commit = asyncio.ensure_future(large.commit())
    await asyncio.wait_for(held.entered.wait(), 5)
    small = box.transaction()
    await small.save(simple_message(2))
    small_commit = asyncio.ensure_future(small.commit())
    for _ in range(20):
        await asyncio.sleep(0.01)
        await box.sync()
        assert list(box.view.uids) == [], "UID 2 became visible before UID 1"
    assert not small_commit.done()
    held.gate.set()
    if fail:
        with pytest.raises(OSError):
            await large_commit
    else:
        assert (await large_commit).saved_uids == [1]
    assert (await asyncio.wait_for(small_commit, 5)).saved_uids == [2]
    await box.sync()
    assert list(box.view.uids) == ([2] if fail else [1, 2])


async def test_a_file_a_crash_left_above_uidnext_is_skipped_and_adopted(
    inbox: tuple[User, Mailbox], caplog: pytest.LogCaptureFixture
) -> None:
    user, box = inbox
    tx = box.transaction()
    await tx.save(simple_message(1))
    await tx.commit()
    # What a crash between naming a staged file and the index COMMIT leaves: u.2, no row.
    leftover = SdboxInMemory(guid="0" * 32, received=int(time.time()))
    leftover.write(simple_message(2))
    staged = await user.fs.stage_file(user.mailbox_dir(box.info.guid), leftover.finish())
    assert staged is not None
    await asyncio.to_thread(staged.publish_blocking, "u.2")
    tx = box.transaction()
    await tx.save(simple_message(3))
    assert (await tx.commit()).saved_uids == [3]
    assert "uid 2: its file exists without an index row" in caplog.text
    assert await _read(box, 3) == simple_message(3)
    assert [p.kind for p in (await check(user)).problems] == ["orphaned"]
    await repair(user)
    await box.sync()
    assert list(box.view.uids) == [1, 2, 3]
    assert await _read(box, 2) == simple_message(2)


async def test_a_failed_directory_fsync_makes_nothing_visible_and_leaves_no_file(
    inbox: tuple[User, Mailbox], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The fsync is made to fail by a patch (a real disk cannot be made to fail here).
    user, box = inbox

    def failing_sync(self: Any) -> None:
        raise OSError(5, "simulated directory fsync failure")

    with monkeypatch.context() as patch:
        patch.setattr(local_module._LocalStaged, "sync_directory_blocking", failing_sync)
        tx = box.transaction()
        await tx.save(simple_message(1))
        with pytest.raises(OSError):
            await tx.commit()
    assert _files(user, box) == []  # neither the named file nor the temp one
    await box.sync()
    assert list(box.view.uids) == []
    tx = box.transaction()
    await tx.save(simple_message(2))
    assert (await tx.commit()).saved_uids == [1]  # the UID was not used up
    assert await _read(box, 1) == simple_message(2)


async def test_concurrent_staged_and_reserved_saves_all_land_in_uid_order(
    inbox: tuple[User, Mailbox],
) -> None:
    user, watcher = inbox
    seen: list[int] = []
    done = False

    async def watch() -> None:
        while not done:
            await watcher.sync()
            uids = list(watcher.view.uids)
            assert uids[: len(seen)] == seen, "a lower UID appeared after a higher one"
            seen[:] = uids
            await asyncio.sleep(0)

    async def saver(n: int, large_every: int) -> None:
        box = await user.open_mailbox("INBOX", load_view=False)
        for i in range(12):
            body = SMALL_SAVE_MAX + 10 if i % large_every == 0 else 100
            tx = box.transaction()
            await tx.save(simple_message(n * 100 + i, body_size=body))
            await tx.commit()
        await box.close()

    watching = asyncio.ensure_future(watch())
    await asyncio.gather(*(saver(n, 3 + n) for n in range(4)))
    done = True
    await watching
    await watcher.sync()
    assert list(watcher.view.uids) == list(range(1, 49))
    assert await _pending_rows(user) == []

    def names(conn: sqlite3.Connection) -> list[str]:
        return [r[0] for r in conn.execute("SELECT file_name FROM messages ORDER BY uid")]

    assert await user.db.read(names) == [f"u.{u}" for u in range(1, 49)]
    assert (await check(user)).ok


@pytest.mark.parametrize("large", [False, True], ids=["staged", "reserved"])
async def test_a_commit_cancelled_while_its_index_job_runs_keeps_what_the_job_commits(
    inbox: tuple[User, Mailbox], monkeypatch: pytest.MonkeyPatch, large: bool
) -> None:
    # The session goes away (its command is cancelled) while the index job runs: the
    # job still commits, so the message's file must stay (a row never loses its data).
    user, box = inbox
    inside, release = threading.Event(), threading.Event()
    original = mailbox_module._insert_saves

    def held(*args: Any) -> None:
        inside.set()  # (in the index writer's thread)
        release.wait(5)
        original(*args)

    monkeypatch.setattr(mailbox_module, "_insert_saves", held)
    data = simple_message(1, body_size=SMALL_SAVE_MAX + 1000 if large else 100)
    tx = box.transaction()
    await tx.save(data)
    commit = asyncio.ensure_future(tx.commit())
    assert await asyncio.to_thread(inside.wait, 5)
    commit.cancel()
    with pytest.raises(asyncio.CancelledError):
        await commit
    release.set()
    for _ in range(200):  # the job commits on its own
        await box.sync()
        if list(box.view.uids):
            break
        await asyncio.sleep(0.01)
    assert list(box.view.uids) == [1]
    assert await _read(box, 1) == data
    assert (await check(user)).ok
