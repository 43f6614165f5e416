"""mdbox keeps the file it saved into open for the next save: locked without a query,
an open or a stat, yet never appended to once it was deleted, and never at a stale
offset after another process appended to it."""

from __future__ import annotations

from pathlib import Path

import pytest

from aiodbox.storage import Storage
from aiodbox.storage import formats as formats_module
from aiodbox.storage.mailbox import DELETED, Mailbox
from aiodbox.storage.purge import purge

from .storage_testlib import mailbox_bodies, make_storage, simple_message


async def _bodies(tmp_path: Path) -> dict[int, bytes]:
    """Every message of u's INBOX as a fresh storage (no cache of ours) reads it."""
    storage, _ = make_storage(tmp_path, "mdbox", "posix")
    try:
        return await mailbox_bodies(storage)
    finally:
        await storage.close()


async def _save(storage: Storage, n: int, name: str = "u") -> int:
    user = await storage.user(name)
    box: Mailbox = await user.open_mailbox("INBOX", load_view=False)
    try:
        tx = box.transaction()
        await tx.save(simple_message(n))
        return (await tx.commit()).saved_uids[0]
    finally:
        await box.close()


async def test_consecutive_saves_lock_the_kept_file_without_opening_it(tmp_path: Path) -> None:
    storage, fs = make_storage(tmp_path, "mdbox", "posix")
    await _save(storage, 1)
    fs.counters.reset()
    for n in range(2, 6):
        await _save(storage, n)
    assert fs.counters.opens == 0 and fs.counters.stats == 0
    assert await _bodies(tmp_path) == {n: simple_message(n) for n in range(1, 6)}
    await storage.close()


async def test_a_save_after_the_kept_file_was_purged_lands_in_a_live_file(
    tmp_path: Path,
) -> None:
    storage, _ = make_storage(tmp_path, "mdbox", "posix")
    for n in (1, 2):
        await _save(storage, n)  # m.1 stays open as the spare
    # Another process expunges 1 and purges: m.1 is rewritten as m.2 and deleted.
    other, _ = make_storage(tmp_path, "mdbox", "posix")
    user = await other.user("u")
    inbox = await user.open_mailbox("INBOX")
    await inbox.store([1], "add", DELETED)
    await inbox.expunge()
    assert (await purge(user)).files_deleted == 1
    await inbox.close()
    await other.close()
    uid = await _save(storage, 3)  # must not go into the deleted m.1
    assert await _bodies(tmp_path) == {2: simple_message(2), uid: simple_message(3)}
    await storage.close()


async def test_another_process_appending_to_the_kept_file_moves_the_next_offset(
    tmp_path: Path,
) -> None:
    storage, _ = make_storage(tmp_path, "mdbox", "posix")
    await _save(storage, 1)  # m.1 stays open, its size as of this save
    other, _ = make_storage(tmp_path, "mdbox", "posix")
    for n in (2, 3):
        await _save(other, n)  # appended to m.1 too
    await other.close()
    await _save(storage, 4)
    assert await _bodies(tmp_path) == {n: simple_message(n) for n in range(1, 5)}
    await storage.close()


async def test_kept_files_are_capped_per_user_and_per_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(formats_module, "SPARE_FILES_PER_PROCESS", 2)
    storage, fs = make_storage(tmp_path, "mdbox", "posix")
    for n, name in enumerate(["a", "b", "c"]):
        await _save(storage, n, name)
    assert fs.counters.open_handles == 2  # a's file was closed when c's was kept
    fs.counters.reset()
    await _save(storage, 10, "c")
    await _save(storage, 11, "a")
    assert fs.counters.opens == 1  # only a's, which was no longer kept
    await storage.close()
