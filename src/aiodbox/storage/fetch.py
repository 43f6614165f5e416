"""Parallel FETCH: read many messages with bounded prefetch, deliver them in order.

Theory of operation
-------------------
:func:`fetch_many` walks the requested UIDs and keeps a *window* of at most
``prefetch`` loader tasks, one per message, in the order of the UIDs.  The generator
waits for the oldest task, hands its :class:`FetchedMessage` to the consumer, and only
then starts the next loader, so:

* results come out in the order of ``uids`` however the I/O completes;
* at most ``prefetch`` messages are being loaded or are loaded-but-not-delivered at any
  time; a consumer that is slow to ask for the next message stops the prefetcher (the
  generator does not run while the consumer works on a message);
* a high-latency backend costs about one round trip per *window*, not per message: the
  ``prefetch`` loaders issue their opens and reads together.

A loader (:func:`_load`) reads only what the :class:`FetchParts` ask for:

``structure``
    From the index ``cache`` column (``MessageSummary.to_bytes()``) when it is there: no
    message I/O at all.  Otherwise the message is streamed once through
    :class:`~aiodbox.message.parser.MessageParser`, summarised, and the cache bytes are
    queued for the index; the writes are batched (:class:`_CacheWriter`).
``header``
    The raw header (up to and including the empty line that ends it): exactly the
    header's bytes when the cached summary says how long it is, else the body stream is
    read until the header ends, never to the end of a large message.
``body`` / ``ranges``
    The message stays open and a :class:`~aiodbox.dbox.file.BodyStream` per range is
    opened with its first ``readahead`` bytes already fetched, so the consumer's first
    read is served at once; the rest is read as the consumer reads it.  A whole stream
    that the loader had to read anyway (to parse the structure of a small message) is
    rewound and handed out rather than read twice.

Memory is bounded by ``prefetch`` * (``readahead`` + header size) plus what the consumer
keeps: bodies are never held whole.

Expunges: UIDs not in the index when their batch of records is read are skipped, and
so is a message whose file is gone by the time it is opened (sdbox deletes files right
after the index transaction).  An mdbox record expunged after its index row was read is
still delivered: its bytes stay in the ``m.N`` file until ``purge``.  Callers that must
report missing UIDs compare the UIDs delivered with those asked for (the order is kept).

Ownership: a delivered :class:`FetchedMessage` belongs to the consumer, who calls
:meth:`FetchedMessage.aclose` (closing the sdbox file handle).  Everything not delivered
(loaders still running or finished when the consumer stops, is cancelled or an error
ends the iteration) is cancelled and closed by the generator itself.  Use
``contextlib.aclosing(fetch_many(...))`` when the loop may end early (``break``) and the
clean-up must happen at once rather than when the generator is garbage collected.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiodbox.dbox.file import BodyStream, DboxCorruptedError, DboxMessage, memory_body_stream
from aiodbox.fs import FsError, FsNotFound
from aiodbox.message.parser import MessageParser
from aiodbox.message.summary import MessageSummary, summarize
from aiodbox.storage.errors import (
    CorruptedMessage,
    MessageNotFound,
    StorageError,
    StorageUnavailable,
)

if TYPE_CHECKING:
    from aiodbox.storage.mailbox import Mailbox, MailRecord

ByteRange = tuple[int, int | None]
"""``(start, end)`` in IMAP bytes of the message; ``end`` None means its end."""

WHOLE: ByteRange = (0, None)
"""The key of the whole-message stream (``FetchParts.body``)."""

_log = logging.getLogger("aiodbox.storage")

RECORD_BATCH = 256
"""Index records are read this many at a time, as the window moves on."""
CACHE_BATCH = 64
"""Structure cache rows are written to the index this many at a time."""
HEADER_READ = 8 << 10
"""Read size when only the header is wanted and its length is not known."""
YIELD_EVERY = 256 << 10
"""Parsing or matching this many bytes served at once (cached files) yields to the loop."""
SMALL_FILE_SLACK = 1024
"""Messages up to ``readahead`` minus this (framing and metadata) are opened as small
files: read whole, several at a time where the format can (sdbox)."""


@dataclass(frozen=True, slots=True)
class FetchParts:
    """What :func:`fetch_many` reads for each message.

    Attributes:
        structure: The parsed structure (:class:`MessageSummary`: BODYSTRUCTURE, BODY,
            ENVELOPE and the part table), from the index cache when present.
        header: The raw header bytes of the message.
        body: Keep the message open with a prefetched stream over all of it
            (:meth:`FetchedMessage.open_body` with no arguments takes it).
        ranges: Byte ranges to prefetch a stream for (partial FETCH ``<start.len>``);
            :meth:`FetchedMessage.open_body` ``(start, end)`` takes them.
        ranges_for: Ranges that depend on the message's structure (``BODY[1.2]``,
            ``BODY[2.MIME]``): called with the summary, its result is prefetched like
            ``ranges``.  Implies ``structure``.
    """

    structure: bool = False
    header: bool = False
    body: bool = False
    ranges: tuple[ByteRange, ...] = ()
    ranges_for: Callable[[MessageSummary], Sequence[ByteRange]] | None = None

    def __post_init__(self) -> None:
        for start, end in self.ranges:
            _check_range(start, end)

    @property
    def needs_summary(self) -> bool:
        """True if the structure is needed (asked for, or to place ``ranges_for``)."""
        return self.structure or self.ranges_for is not None

    @property
    def keeps_message(self) -> bool:
        """True if the message is handed out open (body or range streams)."""
        return self.body or bool(self.ranges) or self.ranges_for is not None


def _check_range(start: int, end: int | None) -> None:
    if start < 0 or (end is not None and end < start):
        raise ValueError(f"invalid byte range ({start}, {end})")


@dataclass(eq=False, slots=True)
class FetchedMessage:
    """One message as :func:`fetch_many` delivers it.

    Attributes:
        uid: The message's UID.
        record: Its index record (flags, keywords, modseq, sizes, dates as of the read).
        summary: The parsed structure if ``FetchParts.structure`` (or ``ranges_for``).
        header: The raw header bytes if ``FetchParts.header``.
        message: The open message if ``FetchParts.body``/``ranges``/``ranges_for``,
            else None.  Owned by this object: :meth:`aclose` closes it.
        streams: Prefetched streams not taken yet, by ``(start, end)``.
        data: The whole message (its IMAP bytes) when ``FetchParts.body`` was asked and
            the message was small enough to be read whole while it was opened; else
            None (read it through :meth:`open_body`, which works in both cases).
    """

    uid: int
    record: MailRecord
    summary: MessageSummary | None = None
    header: bytes | None = None
    message: DboxMessage | None = None
    streams: dict[ByteRange, BodyStream] = field(default_factory=dict)
    data: bytes | None = None

    def open_body(
        self, start: int = 0, end: int | None = None, *, readahead: int | None = None
    ) -> BodyStream:
        """A non-blocking stream over IMAP bytes ``[start, end)`` of the message.

        The first call for a range that was prefetched (``FetchParts.body`` is
        ``(0, None)``, or one of ``ranges``/``ranges_for``) returns that stream, whose
        first bytes are already buffered; other calls open a new stream (nothing read
        until its first ``read``).  Streams stay usable until :meth:`aclose`.

        Raises:
            ValueError: the message was not kept open (no body or ranges asked for), or
                the range is invalid.
        """
        _check_range(start, end)
        stream = self.streams.pop((start, end), None)
        if stream is not None:
            return stream
        if self.message is None:
            if self.data is not None:  # a small body read whole, no message kept open
                return memory_body_stream(self.data, start, end)
            raise ValueError(f"message {self.uid} was fetched without its body")
        if readahead is None:
            return self.message.open_body(start, end)
        return self.message.open_body(start, end, readahead=readahead)

    async def aclose(self) -> None:
        """Close the message (idempotent); its streams stop working."""
        self.streams.clear()
        msg, self.message = self.message, None
        if msg is not None:
            await msg.aclose()

    def close_now(self) -> bool:
        """:meth:`aclose` without waiting, when nothing needs waiting for (the message
        was read whole from memory, the usual small FETCH); False: call :meth:`aclose`."""
        msg = self.message
        if msg is not None and msg.owns_handle:
            return False
        self.streams.clear()
        self.message = None
        return True


class _CacheWriter:
    """Collects parsed-structure cache rows and writes them in batches, off the window."""

    def __init__(self, mailbox: Mailbox) -> None:
        self._mailbox = mailbox
        self._rows: list[tuple[int, bytes]] = []
        self._task: asyncio.Task[None] | None = None

    def add(self, uid: int, cache: bytes) -> None:
        self._rows.append((uid, cache))
        if len(self._rows) >= CACHE_BATCH and (self._task is None or self._task.done()):
            self._start()

    def _start(self) -> None:
        rows, self._rows = self._rows, []
        task = asyncio.get_running_loop().create_task(self._mailbox.set_cache_many(rows))
        task.add_done_callback(_log_failure)
        self._task = task

    async def aclose(self) -> None:
        """Write what is left and wait for writes in progress.

        A failed write is logged, not raised: the cache is an optimisation only (the
        next FETCH parses the message again).
        """
        if self._rows:
            if self._task is not None:
                await self._wait()
            self._start()
        await self._wait()

    async def _wait(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            with contextlib.suppress(Exception):  # logged by _log_failure
                await task


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        _log.warning("could not store parsed structures in the index", exc_info=task.exception())


def _cached_summary(record: MailRecord) -> MessageSummary | None:
    if not record.cache:
        return None
    try:
        return MessageSummary.from_bytes(record.cache)
    except ValueError:
        return None  # an older or damaged cache entry: parse again


def header_end(data: bytes | bytearray, start: int = 0) -> int | None:
    """Length of the header in ``data`` (through its empty line), or None if not complete.

    ``start`` is where to look from (callers that append chunks pass the old length
    minus 2).  A header without an empty line runs to the end of the message.
    """
    if start == 0:
        if data[:1] == b"\n":
            return 1
        if data[:2] == b"\r\n":
            return 2
    ends = [i for i in (data.find(b"\n\n", start), data.find(b"\n\r\n", start)) if i >= 0]
    if not ends:
        return None
    first = min(ends)
    return first + (2 if data[first + 1 : first + 2] == b"\n" else 3)


class HeaderCollector:
    """Collects a message's header from body chunks (``done`` once it is complete)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.done = False

    def feed(self, chunk: bytes) -> None:
        """Push the next bytes of the message (ignored once the header is complete)."""
        if self.done:
            return
        start = max(0, len(self._buf) - 2)
        self._buf += chunk
        end = header_end(self._buf, start)
        if end is not None:
            del self._buf[end:]
            self.done = True

    def result(self) -> bytes:
        """The header (at end of input: everything fed, the message has no empty line)."""
        return bytes(self._buf)


async def _prefetched(stream: BodyStream) -> BodyStream:
    """Read the stream's first chunk and push it back: the stream is then "warm"."""
    data = await stream.aread()
    if data:
        stream.unread(data)
    return stream


def _as_storage_error(uid: int, exc: BaseException) -> StorageError | None:
    if isinstance(exc, DboxCorruptedError):
        return CorruptedMessage(f"message {uid}: {exc}")
    if isinstance(exc, FsError):
        return StorageUnavailable(f"message {uid}: {exc}")
    return None


async def _expunged(mailbox: Mailbox, uid: int) -> bool:
    """True if ``uid`` is no longer in the index (its file went with an expunge)."""
    return not await mailbox.records([uid])


async def open_record(
    mailbox: Mailbox, record: MailRecord, *, want_body: bool = True
) -> DboxMessage | None:
    """Open a message for reading; None if it was expunged meanwhile.

    Raises:
        CorruptedMessage: the file is damaged, or missing while the index has the row.
        StorageUnavailable: an I/O failure.
    """
    try:
        return await mailbox.open_message(record, want_body=want_body)
    except MessageNotFound:
        return None
    except FsNotFound as e:
        if await _expunged(mailbox, record.uid):
            return None
        raise CorruptedMessage(f"message {record.uid}: its file is missing: {e}") from e
    except (DboxCorruptedError, FsError) as e:
        err = _as_storage_error(record.uid, e)
        assert err is not None
        raise err from e


async def _read_main(
    msg: DboxMessage,
    fetched: FetchedMessage,
    parts: FetchParts,
    *,
    parse: bool,
    readahead: int,
    cache: _CacheWriter,
) -> None:
    """One pass over the start of the message: structure, header, first body chunk."""
    want_header = parts.header and fetched.header is None
    stream = msg.open_body(0, None, readahead=readahead if parse or parts.body else HEADER_READ)
    parser = MessageParser() if parse else None
    collector = HeaderCollector() if want_header else None
    held: list[bytes] | None = [] if parts.body else None
    held_size = 0
    need_chunk = parts.body
    budget = YIELD_EVERY
    while parser is not None or (collector is not None and not collector.done) or need_chunk:
        chunk = await stream.aread()
        if not chunk:
            break
        need_chunk = False
        if parser is not None:
            parser.feed(chunk)
            budget -= len(chunk)
            if budget <= 0:
                budget = YIELD_EVERY
                await asyncio.sleep(0)
        if collector is not None:
            collector.feed(chunk)
        if held is not None:
            held_size += len(chunk)
            if held_size <= readahead:
                held.append(chunk)
            else:
                held = None  # too much to keep: the body gets a stream of its own
    if parser is not None:
        summary = summarize(parser.finish())
        fetched.summary = summary
        cache.add(fetched.uid, summary.to_bytes())
    if collector is not None:
        fetched.header = collector.result()
    if parts.body:
        if held is not None:
            if held:
                stream.unread(b"".join(held))
            fetched.streams[WHOLE] = stream
        else:
            fetched.streams[WHOLE] = await _prefetched(msg.open_body(0, None, readahead=readahead))


async def _read_header_exact(msg: DboxMessage, fetched: FetchedMessage, size: int) -> None:
    stream = msg.open_body(0, size, readahead=max(1, size))
    fetched.header = await stream.read_all(size)


async def _load(
    mailbox: Mailbox,
    record: MailRecord,
    parts: FetchParts,
    readahead: int,
    cache: _CacheWriter,
) -> FetchedMessage | None:
    """Load one message as ``parts`` asks; None if it was expunged meanwhile."""
    fetched = FetchedMessage(record.uid, record)
    cached = _cached_summary(record) if parts.needs_summary or parts.header else None
    if parts.needs_summary:
        fetched.summary = cached
    parse = parts.needs_summary and cached is None
    if not (parse or parts.header or parts.keeps_message):
        return fetched
    want_body = parse or parts.body or bool(parts.ranges) or parts.ranges_for is not None
    msg = await open_record(mailbox, record, want_body=want_body)
    if msg is None:
        return None
    fetched.message = msg
    if parts.body and not (parse or parts.ranges or parts.ranges_for is not None):
        # A small message was read whole while locating it: no stream, no more reads.
        data = msg.preloaded_body()
        if data is not None and (not parts.header or cached is not None):
            fetched.data = data
            if parts.header:
                assert cached is not None
                fetched.header = data[: cached.parts[0].header_size.physical]
            return fetched
    try:
        jobs = []
        if parse or parts.body or (parts.header and cached is None):
            jobs.append(
                _read_main(msg, fetched, parts, parse=parse, readahead=readahead, cache=cache)
            )
        elif parts.header:
            assert cached is not None  # the cache says how long the header is
            jobs.append(_read_header_exact(msg, fetched, cached.parts[0].header_size.physical))
        wanted = list(parts.ranges)
        if parts.ranges_for is not None and not parse:
            assert fetched.summary is not None
            wanted += parts.ranges_for(fetched.summary)
        jobs += _range_jobs(msg, fetched, parts, wanted, readahead)
        await _run_all(jobs)
        if parts.ranges_for is not None and parse:
            # The ranges depend on the structure that was parsed just now.
            assert fetched.summary is not None
            wanted = list(parts.ranges_for(fetched.summary))
            await _run_all(_range_jobs(msg, fetched, parts, wanted, readahead))
    except BaseException as e:
        await fetched.aclose()
        err = _as_storage_error(record.uid, e)
        if err is not None:
            raise err from e
        raise
    if not parts.keeps_message:
        await fetched.aclose()
    return fetched


def _range_jobs(
    msg: DboxMessage,
    fetched: FetchedMessage,
    parts: FetchParts,
    wanted: Sequence[ByteRange],
    readahead: int,
) -> list[Coroutine[object, object, None]]:
    jobs = []
    for start, end in dict.fromkeys(wanted):
        if (start, end) in fetched.streams or ((start, end) == WHOLE and parts.body):
            continue
        jobs.append(_prefetch_range(msg, fetched, start, end, readahead))
    return jobs


async def _prefetch_range(
    msg: DboxMessage, fetched: FetchedMessage, start: int, end: int | None, readahead: int
) -> None:
    _check_range(start, end)
    fetched.streams[(start, end)] = await _prefetched(
        msg.open_body(start, end, readahead=readahead)
    )


async def _run_all(jobs: Sequence[Coroutine[object, object, None]]) -> None:
    """Await the jobs together (one task each only when there is more than one)."""
    if len(jobs) == 1:
        await jobs[0]
    elif jobs:
        tasks = [asyncio.ensure_future(j) for j in jobs]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise


def _whole_only(parts: FetchParts) -> bool:
    """True if ``parts`` asks for the whole body and nothing that needs more reading (the
    header and structure are served from the cache entry, when there is one)."""
    return parts.body and not parts.ranges and parts.ranges_for is None


def _small_cache(record: MailRecord, parts: FetchParts) -> tuple[bool, MessageSummary | None]:
    """Whether the small-message paths can serve ``record`` (the header and structure, if
    asked for, must come from its cache entry), and that entry."""
    if not (parts.needs_summary or parts.header):
        return True, None
    cached = _cached_summary(record)
    return cached is not None, cached


def _small_fetched(
    record: MailRecord, msg: DboxMessage, parts: FetchParts, cached: MessageSummary | None
) -> FetchedMessage | None:
    """A :class:`FetchedMessage` for a message whose body was read whole while opening
    it; None (the message closed) if it was not."""
    data = msg.preloaded_body()
    if data is None:
        msg.close()
        return None
    return _whole_fetched(record, data, parts, cached, msg)


def _whole_fetched(
    record: MailRecord,
    data: bytes,
    parts: FetchParts,
    cached: MessageSummary | None,
    msg: DboxMessage | None = None,
) -> FetchedMessage:
    """A :class:`FetchedMessage` for a message read whole (``data``, its IMAP bytes),
    with the header and structure from its cache entry ``cached`` when asked for."""
    fetched = FetchedMessage(record.uid, record, message=msg, data=data)
    if cached is not None:
        if parts.needs_summary:
            fetched.summary = cached
        if parts.header:
            fetched.header = data[: cached.parts[0].header_size.physical]
    return fetched


def _load_now(mailbox: Mailbox, record: MailRecord, parts: FetchParts) -> FetchedMessage | None:
    """:func:`_load` for a small message that can be served without waiting (its bytes in
    the page cache, see :meth:`MailFormat.open_message_now`); else None.

    Any failure also gives None: the awaitable path meets it again and reports it as
    :func:`_load` does.
    """
    ok, cached = _small_cache(record, parts)
    if not ok:
        return None
    try:
        msg = mailbox.user.format.open_message_now(mailbox.info, record)
    except (DboxCorruptedError, FsError):
        return None
    if msg is None:
        return None
    return _small_fetched(record, msg, parts, cached)


class _Group:
    """Small messages read together (:meth:`MailFormat.read_small_bodies`), in order."""

    __slots__ = ("records", "task")

    def __init__(
        self, records: list[MailRecord], task: asyncio.Task[list[bytes | Exception | None]]
    ) -> None:
        self.records = records
        self.task = task


_Slot = asyncio.Task[FetchedMessage | None] | FetchedMessage | _Group


def _small_slot(
    loop: asyncio.AbstractEventLoop,
    rec: MailRecord,
    body: bytes | Exception | None,
    parts: FetchParts,
    cache_needed: bool,
    load: Callable[[MailRecord], asyncio.Task[FetchedMessage | None]],
) -> _Slot:
    """The window slot for a message :meth:`Mailbox.read_small_bodies` read (or did
    not)."""
    if isinstance(body, bytes):
        cached = _small_cache(rec, parts)[1] if cache_needed else None
        return _whole_fetched(rec, body, parts, cached)
    if body is not None and not isinstance(body, FsNotFound):
        return _failed(loop, rec.uid, body)  # reported at its turn
    return load(rec)  # the general path (which meets a missing file's expunge, too)


async def _group_result(group: _Group) -> list[bytes | Exception | None]:
    """The bodies of a group; all None (each then takes the general path, which meets
    the problem again and reports it) if reading them together failed as a whole."""
    try:
        return await group.task
    except Exception:
        return [None] * len(group.records)


def _failed(
    loop: asyncio.AbstractEventLoop, uid: int, exc: Exception
) -> asyncio.Task[FetchedMessage | None]:
    """A slot that raises what opening message ``uid`` failed with, as :func:`_load`
    would (``CorruptedMessage``, ``StorageUnavailable``)."""

    async def fail() -> FetchedMessage | None:
        err = _as_storage_error(uid, exc)
        if err is None:
            raise exc
        raise err from exc

    return loop.create_task(fail())


def prefetch_depth(mailbox: Mailbox, prefetch: int | None) -> int:
    """``prefetch`` or the configured ``storage.prefetch`` (at least 1)."""
    depth = mailbox.user.storage.config.prefetch if prefetch is None else prefetch
    if depth < 1:
        raise ValueError("prefetch must be at least 1")
    return depth


async def fetch_many(
    mailbox: Mailbox,
    uids: Sequence[int],
    parts: FetchParts,
    *,
    prefetch: int | None = None,
    readahead: int | None = None,
) -> AsyncGenerator[FetchedMessage, None]:
    """Yield the messages ``uids`` in that order, loading up to ``prefetch`` at once.

    See the module docstring for the window and for what each of ``parts`` reads.

    Args:
        mailbox: The mailbox.
        uids: The UIDs, in the order wanted (duplicates are delivered twice).
        parts: What to read.
        prefetch: Messages loaded ahead of the consumer (default: ``storage.prefetch``).
        readahead: Bytes prefetched per stream (default: ``storage.readahead``).

    Yields:
        One :class:`FetchedMessage` per UID still in the mailbox; UIDs that are not (or
        were expunged meanwhile) are skipped, so callers compare UIDs if they must
        report them.  The consumer must ``await fetched.aclose()`` each one.  The index
        cache rows written for parsed structures are visible once the iteration ended.

    Raises:
        CorruptedMessage: a message file is damaged (at that message's turn; the
            messages before it were delivered).
        StorageUnavailable: an I/O error at that message's turn.
        ValueError: ``prefetch`` < 1.
    """
    depth = prefetch_depth(mailbox, prefetch)
    chunk = readahead if readahead is not None else mailbox.user.storage.config.readahead
    wanted = list(uids)
    loop = asyncio.get_running_loop()
    fmt = mailbox.user.format
    window: collections.deque[_Slot] = collections.deque()
    held = 0  # messages in the window (a group holds several)
    records: collections.deque[MailRecord] = collections.deque()
    next_uid = 0
    cache = _CacheWriter(mailbox)
    now = _whole_only(parts)
    grouped = now and fmt.small_batches
    cache_needed = parts.needs_summary or parts.header
    # Overlapping groups keep reads in flight while a group is delivered; a format whose
    # group is one read (mdbox) takes the whole window at once.
    group_size = max(1, depth // 2) if fmt.small_overlap else depth
    small = max(1, chunk - SMALL_FILE_SLACK)

    def load(rec: MailRecord) -> asyncio.Task[FetchedMessage | None]:
        return loop.create_task(_load(mailbox, rec, parts, chunk, cache))

    try:
        while True:
            while held < depth:
                if not records and next_uid < len(wanted):
                    batch = wanted[next_uid : next_uid + RECORD_BATCH]
                    next_uid += len(batch)
                    found = {r.uid: r for r in await mailbox.records(batch)}
                    records.extend(found[u] for u in batch if u in found)
                    continue
                if not records:
                    break
                if grouped and records[0].size <= small:
                    room = min(depth - held, group_size)
                    more = len(records) > room or next_uid < len(wanted)
                    if room < group_size and more and window:
                        break  # wait for room for a whole group
                    group: list[MailRecord] = []
                    while records and len(group) < room and records[0].size <= small:
                        if cache_needed and not _small_cache(records[0], parts)[0]:
                            break
                        group.append(records.popleft())
                    if group:
                        # What can be read at once (cached files) needs no task.
                        done = mailbox.read_small_bodies_now(group, chunk)
                        for rec, body in zip(group, done, strict=False):
                            window.append(_small_slot(loop, rec, body, parts, cache_needed, load))
                        rest = group[len(done) :]
                        if rest:
                            task = loop.create_task(mailbox.read_small_bodies(rest, chunk))
                            window.append(_Group(rest, task))
                        held += len(group)
                        continue
                rec = records.popleft()
                ready = _load_now(mailbox, rec, parts) if now else None
                window.append(ready if ready is not None else load(rec))
                held += 1
            if not window:
                break
            head = window[0]
            if isinstance(head, _Group):
                opened = await _group_result(head)
                window.popleft()  # (only now: until here the clean-up below owns it)
                for rec, body in zip(reversed(head.records), reversed(opened), strict=True):
                    window.appendleft(_small_slot(loop, rec, body, parts, cache_needed, load))
                continue
            result = head if isinstance(head, FetchedMessage) else await head
            window.popleft()
            held -= 1
            if result is not None:
                yield result
    finally:
        tasks: list[asyncio.Task[Any]] = []
        outcomes: list[object] = []
        for slot in window:
            if isinstance(slot, FetchedMessage):
                outcomes.append(slot)
            else:
                pending: asyncio.Task[Any] = slot.task if isinstance(slot, _Group) else slot
                pending.cancel()
                tasks.append(pending)
        outcomes += await asyncio.gather(*tasks, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, FetchedMessage):
                await outcome.aclose()
        await cache.aclose()
