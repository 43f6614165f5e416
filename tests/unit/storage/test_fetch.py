"""fetch_many: order, completeness, bounded prefetch, cancellation, cached structure."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from aiodbox.config import StorageConfig
from aiodbox.dbox.file import DboxMessage
from aiodbox.fs.backends.memory import MemoryFS
from aiodbox.message.parser import parse_message
from aiodbox.message.summary import MessageSummary, summarize
from aiodbox.storage import Storage
from aiodbox.storage.errors import CorruptedMessage, MessageNotFound, StorageUnavailable
from aiodbox.storage.fetch import FetchedMessage, FetchParts, fetch_many, header_end
from aiodbox.storage.mailbox import Mailbox

from .conftest import FixtureMail, load_fixture_mail
from .storage_testlib import CountingFS, fill, simple_message

Factory = Callable[..., tuple[Storage, CountingFS]]

JITTER_STACKS = [
    "latency:2ms,jitter=8ms,seed=1:posix",
    "latency:2ms,jitter=8ms,seed=2:memory",
    "latency:2ms,jitter=8ms,seed=3:posix",
]


def corpus(count: int, seed: int) -> list[bytes]:
    """Messages of varied size: some fit one read, some need many (readahead 4 KiB)."""
    rng = random.Random(seed)
    out = []
    for n in range(count):
        size = rng.choice([0, 50, 900, 3000, 5000, 12000, 40000])
        msg = simple_message(n, size)
        if n % 7 == 3:  # a multipart one
            msg = (
                f"From: m{n}@example.test\r\nSubject: parts {n}\r\nMIME-Version: 1.0\r\n"
                'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
                "--b\r\nContent-Type: text/plain\r\n\r\nfirst part\r\n"
                f"--b\r\nContent-Type: text/html\r\n\r\n<p>{'x' * size}</p>\r\n--b--\r\n"
            ).encode()
        out.append(msg)
    return out


async def open_inbox(storage: Storage) -> Mailbox:
    user = await storage.user("alice")
    return await user.open_mailbox("INBOX")


def header_of(data: bytes) -> bytes:
    end = header_end(data)
    return data if end is None else data[:end]


async def read_stream(fetched: FetchedMessage, start: int = 0, end: int | None = None) -> bytes:
    return b"".join([chunk async for chunk in fetched.open_body(start, end)])


# ----------------------------------------------------------------------- ordering


@pytest.mark.parametrize("fmt", ["sdbox", "mdbox"])
@pytest.mark.parametrize("spec", JITTER_STACKS)
async def test_order_and_completeness_under_jitter(
    fmt: str, spec: str, storage_factory: Factory, closing: list[Storage]
) -> None:
    storage, _fs = storage_factory(fmt, spec, prefetch=6, readahead=4096)
    closing.append(storage)
    mbox = await open_inbox(storage)
    data = corpus(40, seed=len(spec))
    uids = await fill(mbox, data)
    by_uid = dict(zip(uids, data, strict=True))
    wanted = list(uids)
    random.Random(7).shuffle(wanted)
    wanted.insert(5, max(uids) + 100)  # not in the mailbox: skipped
    wanted.append(wanted[0])  # asked twice: delivered twice
    parts = FetchParts(structure=True, header=True, body=True, ranges=((10, 60), (4000, None)))
    expected = await asyncio.to_thread(
        lambda: {u: summarize(parse_message(d)) for u, d in by_uid.items()}
    )

    for round_ in range(2):  # the second round takes the structure from the cache
        got: list[int] = []
        async for f in mbox.fetch_many(wanted, parts):
            try:
                raw = by_uid[f.uid]
                got.append(f.uid)
                assert f.record.uid == f.uid
                assert f.header == header_of(raw)
                assert f.summary == expected[f.uid]
                assert await read_stream(f) == raw
                assert await read_stream(f, 10, 60) == raw[10:60]
                assert await read_stream(f, 4000) == raw[4000:]
                assert await read_stream(f, 1, 3) == raw[1:3]  # not prefetched: opened now
            finally:
                await f.aclose()
        assert got == [u for u in wanted if u in by_uid], f"round {round_}"
        records = await mbox.records(uids)
        assert all(r.cache for r in records)
    await mbox.close()


async def test_messages_not_kept_without_body(
    storage_factory: Factory, closing: list[Storage]
) -> None:
    storage, fs = storage_factory("sdbox", "memory")
    closing.append(storage)
    mbox = await open_inbox(storage)
    uids = await fill(mbox, corpus(5, 1))
    async for f in mbox.fetch_many(uids, FetchParts(header=True)):
        assert f.message is None and f.header
        with pytest.raises(ValueError, match="without its body"):
            f.open_body()
    assert fs.counters.open_handles == 0
    async for f in mbox.fetch_many(uids, FetchParts()):  # index data only
        assert f.record.size > 0 and f.summary is None and f.header is None
    await mbox.close()


async def test_ranges_for_uses_the_structure(
    storage_factory: Factory, closing: list[Storage]
) -> None:
    storage, _fs = storage_factory("mdbox", "latency:1ms,jitter=2ms,seed=4:memory")
    closing.append(storage)
    mbox = await open_inbox(storage)
    data = corpus(14, 2)
    uids = await fill(mbox, data)

    def text_range(s: MessageSummary) -> list[tuple[int, int | None]]:
        return [(s.parts[0].body_offset, None)]  # BODY[TEXT]

    for _ in range(2):  # parsed, then cached
        async for f in mbox.fetch_many(uids, FetchParts(ranges_for=text_range)):
            raw = data[uids.index(f.uid)]
            assert f.summary is not None
            start = f.summary.parts[0].body_offset
            assert (start, None) in f.streams
            assert await read_stream(f, start) == raw[start:]
            await f.aclose()
    await mbox.close()


@pytest.mark.parametrize("fmt", ["sdbox", "mdbox"])
@pytest.mark.parametrize("spec", ["posix", "latency:1ms,jitter=2ms,seed=3:posix"])
async def test_small_bodies_are_read_whole_and_keep_nothing_open(
    fmt: str, spec: str, storage_factory: Factory, closing: list[Storage]
) -> None:
    """Whole small bodies (the usual ``FETCH BODY[]``) come as bytes, checked and read
    together, with no message or handle kept; ranges are served from those bytes."""
    storage, fs = storage_factory(fmt, spec, prefetch=8, readahead=64 << 10)
    closing.append(storage)
    mbox = await open_inbox(storage)
    data = corpus(20, seed=11)
    uids = await fill(mbox, data)
    by_uid = dict(zip(uids, data, strict=True))
    counter = OpenCounter(mbox)
    whole = FetchParts(body=True, structure=True, header=True)
    # rounds: the body alone; with the structure (parsed: the general path, which writes
    # the cache rows); with the structure again, now from those rows
    for round_, parts in enumerate((FetchParts(body=True), whole, whole)):
        got = []
        async for f in mbox.fetch_many(uids, parts):
            raw = by_uid[f.uid]
            if round_ != 1:
                assert f.data == raw and f.message is None
                assert f.close_now()
            assert await read_stream(f, 3, 40) == raw[3:40]
            assert await read_stream(f) == raw
            if parts.header:
                assert f.header == header_of(raw)
                assert f.summary == summarize(parse_message(raw))
            await counter.close(f)
            got.append(f.uid)
        assert got == uids
    # the first and last rounds came through the small-body path
    assert counter.opened == 3 * len(uids) and counter.body_reads == 2 * len(uids)
    assert counter.open == 0 and counter.max_open <= 8
    held = 2 if fmt == "mdbox" else 0  # mdbox: the cached reader and a save's spare file
    assert fs.counters.open_handles == held
    await mbox.close()


def test_header_end() -> None:
    assert header_end(b"A: b\r\n\r\nbody") == 8
    assert header_end(b"A: b\n\nbody") == 6
    assert header_end(b"\r\nbody") == 2
    assert header_end(b"A: b\r\nC: d") is None
    assert header_end(b"A: b\r\n\r", 0) is None


# ------------------------------------------------------------------- prefetch bound


class OpenCounter:
    """Counts messages opened by the storage and not closed yet.  A small body read
    whole counts from its read until :meth:`close` closes its message."""

    def __init__(self, mbox: Mailbox) -> None:
        self.open = 0
        self.max_open = 0
        self.opened = 0
        self.bodies: set[int] = set()  # UIDs of small bodies read and not closed
        self.body_reads = 0
        original = mbox.open_message

        async def counting_open(record: Any, **kwargs: Any) -> DboxMessage:
            # counted from the moment the open is asked for: the prefetch window
            self.open += 1
            self.max_open = max(self.max_open, self.open)
            try:
                msg = await original(record, **kwargs)
            except BaseException:
                self.open -= 1
                raise
            self.opened += 1
            close = msg.aclose
            closed = False

            async def counting_close() -> None:
                nonlocal closed
                if not closed:
                    closed = True
                    self.open -= 1
                await close()

            msg.aclose = counting_close  # type: ignore[method-assign]
            return msg

        original_small = mbox.read_small_bodies

        async def counting_small(records: Any, limit: int) -> list[Any]:
            # several bodies read together: each counts like one open_message
            self.open += len(records)
            self.max_open = max(self.max_open, self.open)
            try:
                bodies = await original_small(records, limit)
            except BaseException:
                self.open -= len(records)
                raise
            for rec, body in zip(records, bodies, strict=True):
                if not isinstance(body, bytes):  # failed, or left to open_message
                    self.open -= 1
                    continue
                self.opened += 1
                self.body_reads += 1
                self.bodies.add(rec.uid)
            return bodies

        original_now = mbox.read_small_bodies_now

        def counting_now(records: Any, limit: int) -> list[Any]:
            bodies = original_now(records, limit)
            for rec, body in zip(records, bodies, strict=False):
                if isinstance(body, bytes):
                    self.opened += 1
                    self.open += 1
                    self.max_open = max(self.max_open, self.open)
                    self.body_reads += 1
                    self.bodies.add(rec.uid)
            return bodies

        mbox.open_message = counting_open  # type: ignore[method-assign]
        mbox.read_small_bodies = counting_small  # type: ignore[method-assign]
        mbox.read_small_bodies_now = counting_now  # type: ignore[method-assign]

    async def close(self, fetched: FetchedMessage) -> None:
        """Close ``fetched`` as its consumer does (idempotent)."""
        await fetched.aclose()
        if fetched.uid in self.bodies:
            self.bodies.discard(fetched.uid)
            self.open -= 1


@pytest.mark.parametrize("fmt", ["sdbox", "mdbox"])
@pytest.mark.parametrize("depth", [1, 4, 10])
async def test_never_more_than_prefetch_in_flight(
    fmt: str, depth: int, storage_factory: Factory, closing: list[Storage]
) -> None:
    storage, fs = storage_factory(fmt, "latency:1ms,jitter=3ms,seed=5:posix", prefetch=depth)
    closing.append(storage)
    mbox = await open_inbox(storage)
    uids = await fill(mbox, corpus(30, 3))
    counter = OpenCounter(mbox)
    fs.counters.reset()
    seen = 0
    async for f in mbox.fetch_many(uids, FetchParts(body=True, header=True)):
        # A slow consumer: the prefetcher must wait for it, not run ahead.
        await asyncio.sleep(0.004)
        assert counter.open <= depth
        seen += 1
        await counter.close(f)
    assert seen == len(uids)
    assert counter.max_open <= depth
    assert counter.max_open > 1 or depth == 1  # the window was used
    assert counter.open == 0
    if fmt == "sdbox":  # one file handle per message
        assert fs.counters.max_open_handles == depth
        assert fs.counters.open_handles == 0
    await mbox.close()


async def test_a_consumer_holding_messages_keeps_them(
    storage_factory: Factory, closing: list[Storage]
) -> None:
    storage, fs = storage_factory("sdbox", "memory", prefetch=3)
    closing.append(storage)
    mbox = await open_inbox(storage)
    uids = await fill(mbox, corpus(8, 4))
    counter = OpenCounter(mbox)
    held = [f async for f in mbox.fetch_many(uids, FetchParts(body=True))]
    assert counter.open == len(uids)  # delivered messages are the consumer's to close
    for f in held:
        await counter.close(f)
        await counter.close(f)  # idempotent
    assert counter.open == 0 and fs.counters.open_handles == 0
    await mbox.close()


# -------------------------------------------------------------------- cancellation


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0.01)


def stray_tasks() -> set[asyncio.Task[Any]]:
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}


@pytest.mark.parametrize("fmt", ["sdbox", "mdbox"])
@pytest.mark.parametrize("where", ["in-generator", "in-consumer"])
async def test_cancel_mid_fetch_leaves_no_tasks_or_handles(
    fmt: str, where: str, storage_factory: Factory, closing: list[Storage]
) -> None:
    storage, fs = storage_factory(fmt, "latency:3ms,jitter=3ms,seed=6:posix", prefetch=8)
    closing.append(storage)
    mbox = await open_inbox(storage)
    uids = await fill(mbox, corpus(60, 5))
    # Warm up (mdbox keeps one cached read handle per file: part of the baseline).
    async for f in mbox.fetch_many(uids[:2], FetchParts(body=True)):
        await f.aclose()
    await settle()
    fds, handles = open_fds(), fs.counters.open_handles
    assert not stray_tasks()
    received = asyncio.Event()
    count = 0

    async def consume() -> None:
        nonlocal count
        parts = FetchParts(structure=True, header=True, body=True)
        async with contextlib.aclosing(mbox.fetch_many(uids, parts)) as results:
            async for f in results:
                try:
                    count += 1
                    if count == 5:
                        received.set()
                    await read_stream(f)
                    if where == "in-consumer":
                        await asyncio.sleep(1)  # cancelled here, the generator suspended
                finally:
                    await f.aclose()

    task = asyncio.create_task(consume())
    await received.wait()
    if where == "in-generator":
        await asyncio.sleep(0.004)  # the consumer is waiting for the next message
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert 5 <= count < len(uids)
    await settle()
    assert not stray_tasks()
    assert fs.counters.open_handles == handles
    assert open_fds() == fds
    await mbox.close()


# --------------------------------------------------------------------- expunges, errors


async def test_expunged_before_or_while_fetching(
    storage_factory: Factory, closing: list[Storage]
) -> None:
    storage, _fs = storage_factory("sdbox", "latency:1ms:posix", prefetch=4)
    closing.append(storage)
    mbox = await open_inbox(storage)
    data = corpus(12, 6)
    uids = await fill(mbox, data)
    await mbox.store(uids[:2], "add", 8)
    await mbox.expunge(uids[:2])  # gone before the fetch: not delivered
    original = mbox.open_message
    victim = uids[6]

    async def expunge_first(record: Any, **kwargs: Any) -> DboxMessage:
        if record.uid == victim:  # gone between the index read and the open
            await mbox.expunge([victim], deleted_only=False)
        return await original(record, **kwargs)

    original_small = mbox.read_small_bodies

    async def expunge_first_small(records: Any, limit: int) -> list[Any]:
        if any(r.uid == victim for r in records):  # (small messages are read together)
            await mbox.expunge([victim], deleted_only=False)
        return await original_small(records, limit)

    mbox.open_message = expunge_first  # type: ignore[method-assign]
    mbox.read_small_bodies = expunge_first_small  # type: ignore[method-assign]
    got = []
    async for f in mbox.fetch_many(uids, FetchParts(body=True)):
        assert await read_stream(f) == data[uids.index(f.uid)]
        got.append(f.uid)
        await f.aclose()
    assert got == [u for u in uids[2:] if u != victim]
    with pytest.raises(MessageNotFound):
        await mbox.open_stream(victim)
    await mbox.close()


async def test_corrupted_message_raises_in_turn(
    storage_factory: Factory, closing: list[Storage], tmp_path: Path
) -> None:
    storage, fs = storage_factory("sdbox", "posix", prefetch=5)
    closing.append(storage)
    mbox = await open_inbox(storage)
    uids = await fill(mbox, corpus(10, 7))
    bad = uids[4]
    path = next((tmp_path / "s1" / "mail").rglob(f"u.{bad}"))
    await asyncio.to_thread(path.write_bytes, b"3 not a dbox file at all\n" * 40)
    got = []
    with pytest.raises(CorruptedMessage, match=f"message {bad}"):
        async for f in mbox.fetch_many(uids, FetchParts(body=True)):
            got.append(f.uid)
            await f.aclose()
    assert got == uids[:4]
    await settle()
    assert not stray_tasks()
    assert fs.counters.open_handles == 0
    await mbox.close()


async def test_io_error_raises_storage_unavailable(closing: list[Storage], tmp_path: Path) -> None:
    memory = MemoryFS()
    cfg = StorageConfig(format="sdbox", fs="memory", index_root=tmp_path, prefetch=3)
    storage = Storage(cfg, fs=memory)
    closing.append(storage)
    mbox = await open_inbox(storage)
    uids = await fill(mbox, corpus(6, 8))
    memory.faults.fail("pread", errno.EIO, times=1)
    with pytest.raises(StorageUnavailable):
        async for f in mbox.fetch_many(uids, FetchParts(body=True)):
            await f.aclose()
    # and the storage keeps working
    assert len([f async for f in mbox.fetch_many(uids, FetchParts())]) == len(uids)
    await mbox.close()


async def test_invalid_arguments(storage_factory: Factory, closing: list[Storage]) -> None:
    storage, _fs = storage_factory("sdbox", "memory")
    closing.append(storage)
    mbox = await open_inbox(storage)
    with pytest.raises(ValueError, match="byte range"):
        FetchParts(ranges=((5, 2),))
    with pytest.raises(ValueError, match="prefetch"):
        async for _ in fetch_many(mbox, [1], FetchParts(), prefetch=0):
            pass
    await mbox.close()


# ------------------------------------------------------------------ open_stream


@pytest.mark.parametrize("fmt", ["sdbox", "mdbox"])
async def test_open_stream_is_non_blocking(
    fmt: str, storage_factory: Factory, closing: list[Storage]
) -> None:
    storage, _fs = storage_factory(fmt, "latency:2ms:memory", readahead=1000)
    closing.append(storage)
    mbox = await open_inbox(storage)
    data = simple_message(1, 5000)
    (uid,) = await fill(mbox, [data])
    msg, stream = await mbox.open_stream(uid, 100, 4100)
    msg.preload = None  # forget the bytes read while locating it: the stream must read
    await msg.aclose()
    msg, stream = await mbox.open_stream(uid, 100, 4100)
    try:
        msg.preload = None
        stream = msg.open_body(100, 4100, readahead=1000)
        with pytest.raises(BlockingIOError):
            stream.read()  # nothing buffered yet: the read was started
        ready = asyncio.Event()
        stream.set_readable_callback(ready.set)
        await asyncio.wait_for(ready.wait(), 1)
        stream.set_readable_callback(None)
        out = stream.read()
        assert out
        while not stream.eof:
            try:
                out += stream.read()
            except BlockingIOError:
                await stream.wait_readable()
        assert out == data[100:4100]
    finally:
        await msg.aclose()
    record = await mbox.record(uid)
    msg, stream = await mbox.open_stream(record)  # a record saves the index lookup
    async with msg:
        assert await stream.read_all(1 << 20) == data
    with pytest.raises(MessageNotFound):
        await mbox.open_stream(uid + 1)
    await mbox.close()


# ------------------------------------------------- structure cache and Dovecot output


class BodyRanges:
    """Records every body range the storage opens."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.ranges: list[tuple[int, int | None]] = []
        original = DboxMessage.open_body

        def recording(msg: DboxMessage, start: int = 0, end: int | None = None, **kw: Any) -> Any:
            self.ranges.append((start, end))
            return original(msg, start, end, **kw)

        monkeypatch.setattr(DboxMessage, "open_body", recording)


@pytest.mark.parametrize("fmt", ["sdbox", "mdbox"])
async def test_cached_structure_needs_no_body_io(
    fmt: str, storage_factory: Factory, closing: list[Storage], monkeypatch: pytest.MonkeyPatch
) -> None:
    storage, fs = storage_factory(fmt, "latency:1ms:posix")
    closing.append(storage)
    mbox = await open_inbox(storage)
    data = [simple_message(n, 30_000) for n in range(12)]
    uids = await fill(mbox, data)
    first = {f.uid: f.summary async for f in mbox.fetch_many(uids, FetchParts(structure=True))}
    assert fs.counters.opens + fs.counters.preads > 0  # parsed from the files
    opened = BodyRanges(monkeypatch)

    fs.counters.reset()
    second = {f.uid: f.summary async for f in mbox.fetch_many(uids, FetchParts(structure=True))}
    assert second == first
    assert (fs.counters.opens, fs.counters.preads, fs.counters.bytes_read) == (0, 0, 0)
    assert opened.ranges == []

    # Header: exactly the header's bytes are read (the length is in the cache).
    fs.counters.reset()
    async for f in mbox.fetch_many(uids, FetchParts(structure=True, header=True)):
        assert f.header == header_of(data[uids.index(f.uid)])
    sizes = [len(header_of(d)) for d in data]
    assert sorted(opened.ranges) == sorted((0, n) for n in sizes)
    # + locating each message: its first 4 KiB (one page, with the open) and last 512 bytes
    assert fs.counters.bytes_read <= sum(sizes) + len(data) * (4096 + 512)
    await mbox.close()


@pytest.mark.parametrize("fmt", ["sdbox", "mdbox"])
async def test_fixture_structures_are_dovecots(
    fmt: str, fixtures_dir: Path, storage_factory: Factory, closing: list[Storage]
) -> None:
    mails: list[FixtureMail] = await load_fixture_mail(fixtures_dir)
    assert len(mails) == 52
    storage, fs = storage_factory(fmt, "latency:1ms,jitter=2ms,seed=8:memory")
    closing.append(storage)
    mbox = await open_inbox(storage)
    uids = await fill(mbox, [m.imap for m in mails])
    by_uid = dict(zip(uids, mails, strict=True))
    for round_ in ("parsed", "cached"):
        fs.counters.reset()
        seen = 0
        async for f in mbox.fetch_many(uids, FetchParts(structure=True)):
            m = by_uid[f.uid]
            assert f.summary is not None
            assert f.summary.bodystructure == m.bodystructure, (round_, m.user, m.uid)
            assert f.summary.envelope == m.envelope, (round_, m.user, m.uid)
            seen += 1
        assert seen == len(mails)
        if round_ == "cached":
            assert (fs.counters.opens, fs.counters.preads) == (0, 0)
    await mbox.close()
