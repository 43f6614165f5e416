"""sdbox: a message announced small is built in memory and written by one FS call at
commit; one that outgrows its size hint is streamed like a large one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

from aiodbox.config import StorageConfig
from aiodbox.fs.backends.posix_threads import ThreadEngine
from aiodbox.storage import Storage
from aiodbox.storage.formats import SMALL_SAVE_MAX

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
    assert _jobs(storage) == before + 1  # create, write, fsync, link, dir fsync: one job
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
