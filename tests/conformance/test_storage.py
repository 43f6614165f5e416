"""The storage contract, checked on sdbox and mdbox over several FS stacks."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from aiodbox.config import StorageConfig
from aiodbox.fs import FS, open_fs
from aiodbox.storage import Storage
from aiodbox.storage.errors import (
    InvalidMailboxName,
    MailboxExists,
    MailboxHasChildren,
    MailboxNotFound,
)
from aiodbox.storage.mailbox import DELETED, SEEN, Mailbox

from .conftest import URING_UNAVAILABLE

STORAGE_CASES = [
    ("sdbox", "memory"),
    ("mdbox", "memory"),
    ("sdbox", "posix"),
    ("mdbox", "posix"),
    ("sdbox", "latency:2ms:posix"),
    ("sdbox", "uring"),
    ("mdbox", "uring"),
]


def _case(case: tuple[str, str]) -> object:
    if case[1].endswith("uring") and URING_UNAVAILABLE is not None:
        reason = f"io_uring unavailable: {URING_UNAVAILABLE}"
        return pytest.param(case, marks=pytest.mark.skip(reason=reason))
    return case


def message(n: int, body: bytes = b"") -> bytes:
    return (
        f"From: a{n}@example.test\r\nTo: b@example.test\r\nSubject: message {n}\r\n"
        f"Message-ID: <m{n}@example.test>\r\n\r\nbody {n}\r\n"
    ).encode() + body


@pytest.fixture(params=[_case(c) for c in STORAGE_CASES], ids=lambda c: f"{c[0]}-{c[1]}")
def case(request: pytest.FixtureRequest) -> tuple[str, str]:
    value: tuple[str, str] = request.param
    return value


@pytest.fixture
def make_storage(case: tuple[str, str], tmp_path: Path) -> Callable[..., Storage]:
    fmt, spec = case
    shared: dict[str, FS] = {}

    def make(**overrides: object) -> Storage:
        cfg = StorageConfig(
            format=fmt,
            mail_root=tmp_path / "mail",
            index_root=tmp_path / "index",
            fs=spec,
            fsync="never",
            mdbox_rotate_size=int(overrides.pop("rotate", 64 * 1024)),  # type: ignore[call-overload]
        )
        if spec == "memory":  # a second Storage must see the same files
            fs = shared.setdefault("fs", open_fs("memory"))
            return Storage(cfg, fs=fs)
        return Storage(cfg)

    return make


@pytest.fixture
async def storage(make_storage: Callable[..., Storage]) -> AsyncIterator[Storage]:
    s = make_storage()
    yield s
    await s.close()


async def body_of(mbox: Mailbox, uid: int) -> bytes:
    msg = await mbox.open_message(await mbox.record(uid))
    stream = msg.open_body()
    parts = [chunk async for chunk in stream]
    return b"".join(parts)


# ------------------------------------------------------------------ mailboxes


async def test_new_user_gets_inbox_and_special_use_folders(storage: Storage) -> None:
    user = await storage.user("alice")
    boxes = {m.name: m.special_use for m in await user.list_mailboxes()}
    assert boxes == {
        "INBOX": None,
        "Sent": "\\Sent",
        "Drafts": "\\Drafts",
        "Trash": "\\Trash",
        "Junk": "\\Junk",
        "Archive": "\\Archive",
    }
    assert "INBOX" in await user.subscriptions()


async def test_create_rename_delete_and_subscriptions(storage: Storage) -> None:
    user = await storage.user("alice")
    await user.create_mailbox("Work")
    await user.create_mailbox("Work/2024")
    with pytest.raises(MailboxExists):
        await user.create_mailbox("Work")
    with pytest.raises(InvalidMailboxName):
        await user.create_mailbox("bad//name")
    await user.subscribe("Work/2024")
    with pytest.raises(MailboxHasChildren):
        await user.delete_mailbox("Work")
    inbox_case = await user.get_mailbox_info("inbox")
    assert inbox_case.name == "INBOX"
    old = await user.get_mailbox_info("Work/2024")
    await user.rename_mailbox("Work", "Jobs")
    names = [m.name for m in await user.list_mailboxes()]
    assert "Jobs" in names and "Jobs/2024" in names and "Work" not in names
    renamed = await user.get_mailbox_info("Jobs/2024")
    assert (renamed.guid, renamed.uidvalidity) == (old.guid, old.uidvalidity)
    await user.delete_mailbox("Jobs/2024")
    await user.delete_mailbox("Jobs")
    with pytest.raises(MailboxNotFound):
        await user.get_mailbox_info("Jobs")
    with pytest.raises(InvalidMailboxName):
        await user.delete_mailbox("INBOX")


# ------------------------------------------------------------------- messages


async def test_save_fetch_flags_roundtrip(storage: Storage) -> None:
    user = await storage.user("alice")
    inbox = await user.open_mailbox("INBOX")
    uid1 = await inbox.save(message(1), flags=SEEN, keywords=["$Label1"], internal_date=1700000000)
    uid2 = await inbox.save(message(2))
    assert (uid1, uid2) == (1, 2)
    assert list(inbox.view.uids) == [1, 2]
    rec = await inbox.record(1)
    assert rec.flags == SEEN and rec.keywords == ("$Label1",)
    assert rec.internal_date == 1700000000
    assert rec.size == len(message(1))
    assert await body_of(inbox, 1) == message(1)
    assert await body_of(inbox, 2) == message(2)
    before = inbox.view.highestmodseq
    await inbox.store([2], "add", DELETED, ["Work"])
    rec2 = await inbox.record(2)
    assert rec2.flags == DELETED and rec2.keywords == ("Work",)
    assert rec2.modseq > before
    assert "Work" in inbox.view.mailbox_keywords
    res = await inbox.store([1, 2], "replace", 0, [], unchanged_since=before)
    assert res.modified == [2]
    assert (await inbox.record(1)).flags == 0
    await inbox.close()


async def test_big_message_is_streamed(storage: Storage) -> None:
    user = await storage.user("alice")
    inbox = await user.open_mailbox("INBOX")
    chunk = os.urandom(64 * 1024)

    async def chunks() -> AsyncIterator[bytes]:
        yield b"Subject: big\r\n\r\n"
        for _ in range(80):  # 5 MiB
            yield chunk

    uid = await inbox.save(chunks())
    expected = hashlib.sha256(b"Subject: big\r\n\r\n" + chunk * 80).hexdigest()
    msg = await inbox.open_message(await inbox.record(uid))
    h = hashlib.sha256()
    biggest = 0
    async for part in msg.open_body():
        biggest = max(biggest, len(part))
        h.update(part)
    assert h.hexdigest() == expected
    assert biggest <= 1 << 20
    await inbox.close()


async def test_transaction_is_all_or_nothing(storage: Storage) -> None:
    user = await storage.user("alice")
    inbox = await user.open_mailbox("INBOX")
    tx = inbox.transaction()
    for i in range(3):
        await tx.save(message(i))
    assert len(inbox.view) == 0
    await tx.rollback()
    assert len(inbox.view) == 0 and (await user.status("INBOX")).messages == 0
    tx = inbox.transaction()
    for i in range(3):
        await tx.save(message(i))
    assert (await user.status("INBOX")).messages == 0
    result = await tx.commit()
    assert result.saved_uids == [1, 2, 3]  # UIDs are reserved at commit: rollback burnt none
    assert (await user.status("INBOX")).messages == 3
    await inbox.close()


async def test_failed_stream_leaves_nothing(storage: Storage) -> None:
    user = await storage.user("alice")
    inbox = await user.open_mailbox("INBOX")

    async def broken() -> AsyncIterator[bytes]:
        yield b"Subject: half\r\n\r\n" + b"x" * 100_000
        raise ConnectionResetError("client went away")

    tx = inbox.transaction()
    await tx.save(message(1))
    with pytest.raises(ConnectionResetError):
        await tx.save(broken())
    assert (await user.status("INBOX")).messages == 0
    await inbox.save(message(2))
    assert await body_of(inbox, inbox.view.uids[0]) == message(2)
    await inbox.close()


async def test_copy_move_expunge(storage: Storage) -> None:
    user = await storage.user("alice")
    inbox = await user.open_mailbox("INBOX")
    archive = await user.open_mailbox("Archive")
    for i in range(4):
        await inbox.save(message(i), flags=SEEN if i % 2 else 0, keywords=["K"] if i == 3 else [])
    res = await inbox.copy([2, 4], archive)
    assert res.copied == [(2, 1), (4, 2)]
    assert res.dest_uidvalidity == archive.info.uidvalidity
    assert list(archive.view.uids) == [1, 2]
    rec = await archive.record(2)
    assert rec.flags == SEEN and rec.keywords == ("K",)
    assert await body_of(archive, 2) == message(3)
    res = await inbox.move([1], archive)
    assert res.copied == [(1, 3)]
    assert list(inbox.view.uids) == [2, 3, 4]
    assert await body_of(archive, 3) == message(0)
    await inbox.store([2, 3], "add", DELETED)
    assert await inbox.expunge() == [2, 3]
    assert list(inbox.view.uids) == [4]
    # the copy of 2 survives the expunge of its original
    assert await body_of(archive, 1) == message(1)
    assert await body_of(inbox, 4) == message(3)
    status = await user.status("Archive")
    assert (status.messages, status.uidnext) == (3, 4)
    await inbox.close()
    await archive.close()


async def test_changes_from_another_process_reach_the_view(
    make_storage: Callable[..., Storage],
) -> None:
    one, two = make_storage(), make_storage()
    u1, u2 = await one.user("bob"), await two.user("bob")
    a = await u1.open_mailbox("INBOX")
    b = await u2.open_mailbox("INBOX")
    await a.save(message(1))
    assert len(b.view) == 0
    assert await b.sync() is True
    assert list(b.view.uids) == [1]
    await a.store([1], "add", SEEN)
    assert await b.sync()
    assert b.view.flags[0] == SEEN
    assert await b.sync() is False
    await a.store([1], "add", DELETED)
    await a.expunge()
    assert await b.sync()
    assert len(b.view) == 0
    await a.close()
    await b.close()
    await one.close()
    await two.close()


async def test_status_counts(storage: Storage) -> None:
    user = await storage.user("alice")
    inbox = await user.open_mailbox("INBOX")
    await inbox.save(message(1), flags=SEEN)
    await inbox.save(message(2))
    await inbox.save(message(3), flags=DELETED)
    st = await user.status("INBOX")
    assert (st.messages, st.unseen, st.uidnext, st.deleted) == (3, 2, 4, 1)
    assert st.size == sum(len(message(i)) for i in (1, 2, 3))
    await inbox.close()


async def test_rename_inbox_moves_its_messages(storage: Storage) -> None:
    user = await storage.user("alice")
    inbox = await user.open_mailbox("INBOX")
    await inbox.save(message(1))
    await inbox.close()
    await user.rename_mailbox("INBOX", "Old")
    assert (await user.status("INBOX")).messages == 0
    assert (await user.status("Old")).messages == 1
    old = await user.open_mailbox("Old")
    assert await body_of(old, 1) == message(1)
    await old.close()


async def test_deleted_mailbox_is_gone_for_open_handles(storage: Storage) -> None:
    user = await storage.user("alice")
    await user.create_mailbox("Tmp")
    mbox = await user.open_mailbox("Tmp")
    await mbox.save(message(1))
    await user.delete_mailbox("Tmp")
    with pytest.raises(MailboxNotFound):
        await mbox.sync()
    await asyncio.sleep(0)
