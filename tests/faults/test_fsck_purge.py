"""fsck finds and repairs every kind of damage; purge reclaims mdbox space safely."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from aiodbox.storage import Storage, User
from aiodbox.storage.fsck import LOST_FOUND, check, repair
from aiodbox.storage.mailbox import DELETED, Mailbox
from aiodbox.storage.purge import purge

from .storage_child import check as check_message
from .storage_child import message, storage

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["sdbox", "mdbox"])
def fmt(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


@pytest.fixture
async def store(fmt: str, tmp_path: Path) -> AsyncIterator[Storage]:
    st = storage(str(tmp_path), fmt)
    yield st
    await st.close()


async def fill(user: User, n: int) -> Mailbox:
    inbox = await user.open_mailbox("INBOX")
    for i in range(n):
        await inbox.save(message("a", i), flags=1 if i % 2 else 0, keywords=["K"] if i == 2 else [])
    return inbox


async def contents(mbox: Mailbox) -> dict[int, bytes]:
    out = {}
    for rec in await mbox.records(list(mbox.view.uids)):
        msg = await mbox.open_message(rec)
        out[rec.uid] = b"".join([c async for c in msg.open_body()])
        await msg.aclose()
    return out


def sql(tmp_path: Path, statement: str, *args: object) -> None:
    conn = sqlite3.connect(tmp_path / "index" / "u" / "index.sqlite")
    with conn:
        conn.execute(statement, args)
    conn.close()


def mail_files(tmp_path: Path, fmt: str) -> list[Path]:
    root = tmp_path / "mail" / "u"
    pattern = "mailboxes/*/u.*" if fmt == "sdbox" else "storage/m.*"
    return sorted(root.glob(pattern))


async def test_a_healthy_store_has_no_problems(store: Storage) -> None:
    user = await store.user("u")
    await fill(user, 5)
    report = await check(user)
    assert report.ok, [str(p) for p in report.problems]
    assert report.messages == 5


async def test_missing_data_is_reported_and_dropped(
    store: Storage, fmt: str, tmp_path: Path
) -> None:
    user = await store.user("u")
    inbox = await fill(user, 3)
    before = await contents(inbox)
    if fmt == "sdbox":
        victim = next(p for p in mail_files(tmp_path, fmt) if p.name == "u.2")
        await asyncio.to_thread(victim.unlink)
    else:
        sql(
            tmp_path, "DELETE FROM map WHERE map_uid = (SELECT map_uid FROM messages WHERE uid = 2)"
        )
    report = await check(user)
    assert [p.kind for p in report.problems] == ["missing"]
    assert report.problems[0].uid == 2
    await repair(user)
    if fmt == "sdbox":  # the message is gone
        assert list(inbox.view.uids) == [1, 3]
    else:  # the record is intact: only the map row was lost, and it is re-linked
        assert await contents(inbox) == before
    assert (await check(user)).ok


async def test_orphan_of_a_crashed_save_is_adopted(
    store: Storage, fmt: str, tmp_path: Path
) -> None:
    user = await store.user("u")
    inbox = await fill(user, 3)
    before = await contents(inbox)
    # What a crash between the data commit and the index transaction leaves behind:
    # data, a pending row of a dead process, no message row.
    rec = await inbox.record(3)
    sql(tmp_path, "DELETE FROM messages WHERE uid = 3")
    if fmt == "mdbox":
        sql(tmp_path, "DELETE FROM map WHERE map_uid = ?", rec.map_uid)
        sql(
            tmp_path,
            "INSERT INTO pending (mailbox_id, uid, count, file_id, offset, size, pid, started)"
            " VALUES (1, 3, 1, ?, ?, ?, 999999999, 0)",
            rec.file_id,
            rec.offset,
            rec.record_size,
        )
    else:
        sql(
            tmp_path,
            "INSERT INTO pending (mailbox_id, uid, count, pid, started)"
            " VALUES (1, 3, 1, 999999999, 0)",
        )
    await inbox.load()  # the rows were changed behind the index's back
    assert list(inbox.view.uids) == [1, 2]
    report = await check(user)
    assert [p.kind for p in report.problems] == ["pending"]
    await repair(user)
    after = await contents(inbox)
    assert len(after) == 3
    assert sorted(after.values()) == sorted(before.values())
    if fmt == "sdbox":
        assert after[3] == before[3]  # sdbox keeps the UID its file name carries
    assert (await check(user)).ok


async def test_damaged_bytes_go_to_lost_and_found(store: Storage, fmt: str, tmp_path: Path) -> None:
    user = await store.user("u")
    inbox = await fill(user, 4)
    before = await contents(inbox)
    rec = await inbox.record(2)
    if fmt == "sdbox":
        path = next(p for p in mail_files(tmp_path, fmt) if p.name == "u.2")
        offset = path.stat().st_size - 200  # inside the body
    else:
        path = tmp_path / "mail" / "u" / "storage" / f"m.{rec.file_id}"
        offset = (rec.offset or 0) + 3 + 20
    data = bytearray(await asyncio.to_thread(path.read_bytes))
    data[offset] ^= 0x20
    await asyncio.to_thread(path.write_bytes, bytes(data))
    report = await check(user)
    assert any(p.kind == "corrupted" for p in report.problems), [str(p) for p in report.problems]
    await repair(user)
    survivors = await contents(inbox)
    assert set(survivors.values()) == {before[1], before[3], before[4]}
    lost = await user.open_mailbox(LOST_FOUND)
    rescued = list((await contents(lost)).values())
    assert len(rescued) == 1
    assert rescued[0].startswith(b"X-Aiodbox-Lost-Found: ")
    assert b"body of a 1" in rescued[0]  # the damaged message's bytes were kept
    assert (await check(user)).ok


async def test_a_lost_index_is_rebuilt_from_the_files(fmt: str, tmp_path: Path) -> None:
    st = storage(str(tmp_path), fmt)
    user = await st.user("u")
    await user.create_mailbox("Work/2024")
    inbox = await fill(user, 4)
    work = await user.open_mailbox("Work/2024")
    await inbox.copy([1, 2], work)
    expected_inbox = sorted((await contents(inbox)).values())
    expected_work = sorted((await contents(work)).values())
    validity = {m.name: m.uidvalidity for m in await user.list_mailboxes()}
    await st.close()
    for f in (tmp_path / "index" / "u").iterdir():
        await asyncio.to_thread(f.unlink)
    st = storage(str(tmp_path), fmt)
    user = await st.user("u")  # a fresh index: default mailboxes only
    report = await repair(user)
    assert report.actions
    names = {m.name: m.uidvalidity for m in await user.list_mailboxes()}
    assert names["INBOX"] == validity["INBOX"]
    assert names["Work/2024"] == validity["Work/2024"]
    inbox = await user.open_mailbox("INBOX")
    work = await user.open_mailbox("Work/2024")
    assert sorted((await contents(inbox)).values()) == expected_inbox
    if fmt == "sdbox":  # each copy is a file of its own
        assert sorted((await contents(work)).values()) == expected_work
    else:  # one record for both copies, naming the mailbox it was saved to (as Dovecot)
        assert await contents(work) == {}
    if fmt == "sdbox":
        assert list(inbox.view.uids) == [1, 2, 3, 4]
    assert (await check(user)).ok
    await st.close()


async def test_purge_reclaims_expunged_records(tmp_path: Path) -> None:
    st = storage(str(tmp_path), "mdbox")
    user = await st.user("u")
    inbox = await fill(user, 40)
    await inbox.store(range(1, 41, 2), "add", DELETED)
    assert len(await inbox.expunge()) == 20
    kept = await contents(inbox)
    size_before = sum(p.stat().st_size for p in mail_files(tmp_path, "mdbox"))
    report = await check(user)
    assert sum(p.kind == "garbage" for p in report.problems) == 20
    result = await purge(user)
    assert result.records_dropped == 20 and result.records_moved == 20
    size_after = sum(p.stat().st_size for p in mail_files(tmp_path, "mdbox"))
    assert size_after < size_before * 0.7
    assert await contents(inbox) == kept
    assert (await check(user)).problems == []
    assert (await purge(user)).files_rewritten == 0  # nothing left to do
    await st.close()


async def test_purge_skips_a_file_being_appended_to(tmp_path: Path) -> None:
    from aiodbox.dbox.file import open_mdbox_file

    st = storage(str(tmp_path), "mdbox")
    user = await st.user("u")
    inbox = await fill(user, 3)
    await inbox.store([1], "add", DELETED)
    await inbox.expunge()
    rec = await inbox.record(2)
    held = await open_mdbox_file(user.fs, f"u/storage/m.{rec.file_id}")
    assert held.try_lock()
    result = await purge(user)
    assert result.files_skipped_locked == 1 and result.files_rewritten == 0
    await held.aclose()
    assert (await purge(user)).files_rewritten == 1
    await st.close()


async def mdbox_inbox_with_a_dead_record(tmp_path: Path) -> tuple[Storage, User, Mailbox]:
    """An mdbox INBOX of UIDs 2 and 3 whose file also holds UID 1's expunged record (so
    purge wants to rewrite it)."""
    st = storage(str(tmp_path), "mdbox")
    user = await st.user("u")
    inbox = await fill(user, 3)
    await inbox.store([1], "add", DELETED)
    await inbox.expunge()
    return st, user, inbox


class HeldIndexStep:
    """Holds every save's index step until ``gate`` is set: the save's record is then
    committed to its (locked) file, and no row points at it yet."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from aiodbox.storage import mailbox as mailbox_module

        self.reached, self.gate = asyncio.Event(), asyncio.Event()
        original = mailbox_module._write_in_turn

        async def held(*args: object, **kw: object) -> object:
            self.reached.set()
            await self.gate.wait()
            return await original(*args, **kw)  # type: ignore[arg-type]

        monkeypatch.setattr(mailbox_module, "_write_in_turn", held)


async def assert_saved_once(inbox: Mailbox, uids: list[int]) -> None:
    """The INBOX holds ``uids``, the last one the intact message ("b", 1)."""
    await inbox.sync()
    assert list(inbox.view.uids) == uids
    assert check_message((await contents(inbox))[uids[-1]]) == ("b", 1)


async def test_purge_leaves_a_file_alone_until_the_save_in_it_is_indexed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A save's record is durable in m.N before the index transaction that points at it.
    # A purge of m.N in between (it holds dead records) must not drop that record: the
    # saver keeps the file locked until its index transaction committed.
    st, user, inbox = await mdbox_inbox_with_a_dead_record(tmp_path)
    held = HeldIndexStep(monkeypatch)
    saving = asyncio.ensure_future(inbox.save(message("b", 1)))
    await asyncio.wait_for(held.reached.wait(), 5)
    result = await purge(user)
    assert result.files_skipped_locked == 1 and result.files_rewritten == 0
    held.gate.set()
    await asyncio.wait_for(saving, 5)
    await assert_saved_once(inbox, [2, 3, 4])
    assert (await purge(user)).files_rewritten == 1  # unlocked once indexed
    await assert_saved_once(inbox, [2, 3, 4])
    assert (await check(user)).ok
    await st.close()


async def test_fsck_leaves_a_save_in_progress_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An mdbox save takes its UID in the index job after its record is committed, with no
    # pending row: fsck must not adopt the record meanwhile (the save would then add it
    # a second time).  The save holds its file locked until its index job ended.
    st, user, inbox = await mdbox_inbox_with_a_dead_record(tmp_path)
    held = HeldIndexStep(monkeypatch)
    saving = asyncio.ensure_future(inbox.save(message("b", 1)))
    await asyncio.wait_for(held.reached.wait(), 5)
    report = await repair(user)
    assert not any(a.startswith("adopted") for a in report.actions), report.actions
    assert any(p.detail == "a save in progress" for p in report.problems)
    held.gate.set()
    await asyncio.wait_for(saving, 5)
    await assert_saved_once(inbox, [2, 3, 4])  # saved once, not twice
    assert (await check(user)).ok
    await st.close()


async def test_a_cancelled_save_keeps_its_file_locked_until_its_index_job_ended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The session goes away while the index job of its mdbox save runs: the file stays
    # locked until that job ended (a purge meanwhile skips it), and the job's row then
    # points at an intact record.
    from aiodbox.storage import mailbox as mailbox_module

    st, user, inbox = await mdbox_inbox_with_a_dead_record(tmp_path)
    inside, release = threading.Event(), threading.Event()
    original = mailbox_module._insert_saves

    def held(*args: object) -> None:
        inside.set()  # (in the index writer's thread: the job is running)
        release.wait(5)
        original(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(mailbox_module, "_insert_saves", held)
    saving = asyncio.ensure_future(inbox.save(message("b", 1)))
    assert await asyncio.to_thread(inside.wait, 5)
    saving.cancel()
    await asyncio.sleep(0.05)  # the cancelled save now waits for its job
    assert not saving.done()
    result = await purge(user)
    assert result.files_skipped_locked == 1 and result.files_rewritten == 0
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await saving
    await assert_saved_once(inbox, [2, 3, 4])
    assert (await purge(user)).files_rewritten == 1  # unlocked once the job ended
    await assert_saved_once(inbox, [2, 3, 4])
    assert (await check(user)).ok
    await st.close()


async def test_purge_while_another_process_reads(tmp_path: Path) -> None:
    st = storage(str(tmp_path), "mdbox")
    user = await st.user("u")
    inbox = await fill(user, 60)
    reader = await asyncio.to_thread(
        subprocess.Popen,
        [sys.executable, "-m", "tests.faults.storage_child", "read", str(tmp_path), "mdbox", "4"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    purged = 0
    for round_ in range(6):
        await asyncio.sleep(0.3)
        uids = list(inbox.view.uids)[round_ * 5 : round_ * 5 + 5]
        await inbox.store(uids, "add", DELETED)
        await inbox.expunge()
        purged += (await purge(user)).records_dropped
    out, _ = await asyncio.to_thread(reader.communicate)
    text = out.decode()
    assert reader.returncode == 0, text
    assert "ERRORS 0" in text, text
    reads = int(text.split("READS ")[1].split()[0])
    assert reads > 60
    assert purged == 30
    survivors = await contents(inbox)
    assert len(survivors) == 30 and all(check_message(d) for d in survivors.values())
    await st.close()
