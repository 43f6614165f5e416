"""Helpers for the storage unit tests: a counting FS wrapper and storage factories."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from aiodbox.config import StorageConfig
from aiodbox.fs import FS, FileHandle, FsStat, open_fs
from aiodbox.fs.wrappers.base import WrapperFS, WrapperHandle
from aiodbox.storage import Storage
from aiodbox.storage.mailbox import Mailbox


@dataclass
class Counters:
    """What a :class:`CountingFS` saw."""

    opens: int = 0
    closes: int = 0
    preads: int = 0
    bytes_read: int = 0
    stats: int = 0
    open_handles: int = 0
    max_open_handles: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    round_trips: int = 0
    """Times the number of operations in flight rose from 0 (one "wave" of I/O)."""
    paths_read: dict[str, int] = field(default_factory=dict)

    def begin(self) -> None:
        if self.in_flight == 0:
            self.round_trips += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def end(self) -> None:
        self.in_flight -= 1

    def reset(self) -> None:
        keep = self.open_handles
        self.__init__()  # type: ignore[misc]
        self.open_handles = keep


class CountingHandle(WrapperHandle):
    """Counts opens, closes and reads that had to wait (started I/O)."""

    def __init__(self, inner: FileHandle, fs: CountingFS) -> None:
        super().__init__(inner)
        self._c = fs.counters
        self._c.opens += 1
        self._c.open_handles += 1
        self._c.max_open_handles = max(self._c.max_open_handles, self._c.open_handles)
        self._closed = False
        self._opening = not inner.opened
        self._pending: set[int] = set()
        if self._opening:
            self._c.begin()

    def _on_inner_open(self) -> None:
        if self._opening:
            self._opening = False
            self._c.end()
        super()._on_inner_open()

    def _on_inner_input(self, start: int | None, end: int | None) -> None:
        for off in list(self._pending):
            if start is None or end is None or start <= off < end:
                self._pending.discard(off)
                self._c.end()
        super()._on_inner_input(start, end)

    def pread(self, size: int, offset: int) -> bytes:
        try:
            data = self.inner.pread(size, offset)
        except BlockingIOError:
            if offset not in self._pending and not self._opening:
                self._pending.add(offset)
                self._c.preads += 1
                self._c.begin()
            raise
        if offset in self._pending:
            self._pending.discard(offset)
            self._c.end()
        self._c.bytes_read += len(data)
        self._c.paths_read[self.path] = self._c.paths_read.get(self.path, 0) + len(data)
        return data

    def _count_close(self) -> None:
        if not self._closed:
            self._closed = True
            self._c.closes += 1
            self._c.open_handles -= 1
            for _ in self._pending:
                self._c.end()
            self._pending.clear()
            if self._opening:
                self._opening = False
                self._c.end()

    def close(self) -> None:
        self._count_close()
        super().close()

    async def aclose(self) -> None:
        self._count_close()
        await super().aclose()


class CountingFS(WrapperFS):
    """Counts what the storage asks of the FS below (handles, reads, round trips)."""

    name = "counting"

    def __init__(self, inner: FS) -> None:
        super().__init__(inner)
        self.counters = Counters()

    def wrap(self, handle: FileHandle) -> FileHandle:
        return CountingHandle(handle, self)

    async def stat(self, path: str) -> FsStat:
        self.counters.stats += 1
        self.counters.begin()
        try:
            return await self.inner.stat(path)
        finally:
            self.counters.end()


def make_storage(
    tmp_path: Path, fmt: str, spec: str, *, prefetch: int = 10, readahead: int = 64 << 10
) -> tuple[Storage, CountingFS]:
    """A storage over ``spec`` with a :class:`CountingFS` on top."""
    cfg = StorageConfig(
        format=fmt,
        mail_root=tmp_path / "mail",
        index_root=tmp_path / "index",
        fs=spec,
        fsync="never",
        prefetch=prefetch,
        readahead=readahead,
    )
    os.makedirs(cfg.mail_root, exist_ok=True)
    inner = open_fs(spec, root=str(cfg.mail_root), fsync="never")
    counting = CountingFS(inner)
    return Storage(cfg, fs=counting), counting


async def fill(
    mbox: Mailbox, messages: Iterable[bytes], *, batch: int = 10, **kw: object
) -> list[int]:
    """Save ``messages`` (in transactions of ``batch``); return their UIDs."""
    uids: list[int] = []
    pending = list(messages)
    for start in range(0, len(pending), batch):
        tx = mbox.transaction()
        for data in pending[start : start + batch]:
            await tx.save(data, **kw)  # type: ignore[arg-type]
        uids += (await tx.commit()).saved_uids
    return uids


async def mailbox_bodies(
    storage: Storage, user: str = "u", name: str = "INBOX"
) -> dict[int, bytes]:
    """Every message of ``user``'s mailbox ``name``, by UID, as ``storage`` reads it."""
    u = await storage.user(user)
    mbox = await u.open_mailbox(name)
    out = {}
    try:
        for rec in await mbox.records(list(mbox.view.uids)):
            msg = await mbox.open_message(rec)
            out[rec.uid] = b"".join([c async for c in msg.open_body()])
            await msg.aclose()
    finally:
        await mbox.close()
    return out


def simple_message(n: int, body_size: int = 200) -> bytes:
    """A small text message whose body mentions ``n``."""
    line = f"line of message {n} " * 4 + "\r\n"
    body = (line * (body_size // len(line) + 1))[:body_size]
    return (
        f"From: Sender {n} <s{n}@example.test>\r\nTo: r@example.test\r\n"
        f"Subject: message number {n}\r\nDate: Tue, 02 Jan 2024 09:00:00 +0000\r\n"
        f"Message-ID: <m{n}@example.test>\r\n\r\n{body}"
    ).encode()
