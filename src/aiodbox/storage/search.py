"""Non-blocking SEARCH over a mailbox: index keys at once, content keys with prefetch.

Theory of operation
-------------------
The criteria are a small tree of frozen dataclasses (:data:`Criterion`); the IMAP layer
translates its own search program into it, message sequence numbers already turned into
UIDs.  :func:`search` compiles the tree once into closures over the mailbox view's
compact arrays, each returning a three-valued verdict for a message: ``True``,
``False``, or ``None`` ("needs content").  ``And``/``Or``/``Not`` combine verdicts
Kleene-style, so a message that the index keys already decide is never read
(``UNSEEN BODY x`` reads only the unseen messages).

The 2009 design ("non-blocking search") then runs in three stages per message:

1. **Index** (flags, keywords, UID, internal date, size, modseq): answered from the
   view arrays while scanning, in batches that yield to the loop.
2. **Cache**: ``SENTBEFORE/ON/SINCE`` take the Date from the cached ENVELOPE when the
   index has one (no I/O).
3. **Content**: the rest is queued; up to ``prefetch`` messages are read at once, each
   only as far as needed: header keys (``HEADER``, ``FROM`` ... ``SUBJECT``, ``SENT*``)
   read the header (a small first read); ``BODY``/``TEXT`` stream the message through
   :class:`~aiodbox.message.search.BodyMatcher` (transfer encodings, charsets and
   RFC 2047 decoded; case-insensitive like Dovecot's default comparator) and stop as
   soon as the verdict is known: after the header if the header keys decide it, or when
   every body key matched.  A body is never held whole.

Results are yielded in ascending UID order *as they complete*: a matching UID is
delivered once every message before it is decided, so a slow message holds back the
ones after it but never stops the prefetch of the others.  At most ``prefetch`` content
reads are in flight (a finished read frees its slot at once: it holds only a verdict).

Differences from Dovecot kept on purpose: internal dates are compared in the ``tz``
given (default UTC; Dovecot uses the server's local zone); a message whose Date header
is missing or unparsable counts as sent on 1970-01-01, as Dovecot's ``mail_get_date``
returning 0 makes it; see :mod:`aiodbox.message.search` for the content comparisons.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import datetime
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypeAlias

from aiodbox.message.dates import sent_date
from aiodbox.message.headers import find_values, parse_header_block
from aiodbox.message.search import BodyMatcher, SearchField, SearchKey
from aiodbox.message.summary import MessageSummary
from aiodbox.storage.fetch import (
    HEADER_READ,
    YIELD_EVERY,
    HeaderCollector,
    open_record,
    prefetch_depth,
)

if TYPE_CHECKING:
    from aiodbox.storage.mailbox import Mailbox, MailRecord
    from aiodbox.storage.view import MailboxView

SCAN_BATCH = 512
"""Messages evaluated against the index per step (then the loop gets a turn)."""
NO_DATE = datetime.date(1970, 1, 1)
"""The sent date of a message without a usable Date header (Dovecot: time 0)."""

DateOp: TypeAlias = Literal["before", "on", "since"]
TextField: TypeAlias = Literal["from", "to", "cc", "bcc", "subject", "body", "text"]

# ------------------------------------------------------------------------ criteria


@dataclass(frozen=True, slots=True)
class All:
    """Every message."""


@dataclass(frozen=True, slots=True)
class UidSet:
    """UIDs in any of the inclusive ranges ``(first, last)`` (order within a pair free)."""

    ranges: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class HasFlag:
    """System flag ``bit`` (\\Seen=1 \\Answered=2 \\Flagged=4 \\Deleted=8 \\Draft=16) set
    (``present``) or not."""

    bit: int
    present: bool = True


@dataclass(frozen=True, slots=True)
class HasKeyword:
    """Keyword ``name`` (case-insensitive) set (``present``) or not."""

    name: str
    present: bool = True


@dataclass(frozen=True, slots=True)
class InternalDate:
    """BEFORE / ON / SINCE: the internal date's day compared with ``day``."""

    op: DateOp
    day: datetime.date

    def __post_init__(self) -> None:
        _check_op(self.op, ("before", "on", "since"))


@dataclass(frozen=True, slots=True)
class SentDate:
    """SENTBEFORE / SENTON / SENTSINCE: the Date header's day compared with ``day``."""

    op: DateOp
    day: datetime.date

    def __post_init__(self) -> None:
        _check_op(self.op, ("before", "on", "since"))


@dataclass(frozen=True, slots=True)
class Size:
    """LARGER / SMALLER: ``RFC822.SIZE`` strictly above / below ``n``."""

    op: Literal["larger", "smaller"]
    n: int

    def __post_init__(self) -> None:
        _check_op(self.op, ("larger", "smaller"))


@dataclass(frozen=True, slots=True)
class ModSeq:
    """MODSEQ: the message's modseq is at least ``min``."""

    min: int


@dataclass(frozen=True, slots=True)
class Header:
    """HEADER: a top-level field ``name`` contains ``value`` ("" = the field exists)."""

    name: str
    value: str


@dataclass(frozen=True, slots=True)
class Text:
    """FROM / TO / CC / BCC / SUBJECT / BODY / TEXT contains ``value``."""

    field: TextField
    value: str

    def __post_init__(self) -> None:
        _check_op(self.field, tuple(_TEXT_FIELDS))


@dataclass(frozen=True, slots=True)
class Not:
    """The negation of ``c``."""

    c: Criterion


@dataclass(frozen=True, slots=True)
class Or:
    """``a`` or ``b``."""

    a: Criterion
    b: Criterion


@dataclass(frozen=True, slots=True)
class And:
    """Every item (an empty ``And`` matches every message)."""

    items: tuple[Criterion, ...]


Criterion: TypeAlias = (
    All
    | UidSet
    | HasFlag
    | HasKeyword
    | InternalDate
    | SentDate
    | Size
    | ModSeq
    | Header
    | Text
    | Not
    | Or
    | And
)

_TEXT_FIELDS: dict[str, SearchField] = {
    "from": SearchField.FROM,
    "to": SearchField.TO,
    "cc": SearchField.CC,
    "bcc": SearchField.BCC,
    "subject": SearchField.SUBJECT,
    "body": SearchField.BODY,
    "text": SearchField.TEXT,
}


def _check_op(op: str, allowed: tuple[str, ...]) -> None:
    if op not in allowed:
        raise ValueError(f"{op!r} is not one of {', '.join(allowed)}")


# --------------------------------------------------------------------- compiling

Verdict: TypeAlias = bool | None
Known: TypeAlias = Mapping["Criterion", bool]
"""Content keys decided so far for one message."""
Test: TypeAlias = Callable[[int, Known], Verdict]
"""A compiled criterion: (view position, known content keys) -> verdict."""

_NOTHING: Known = {}


@dataclass
class ContentPlan:
    """The content keys of a criteria tree, by what has to be read to decide them."""

    header_keys: dict[Criterion, SearchKey]
    body_keys: dict[Criterion, SearchKey]
    date_keys: list[SentDate]

    @property
    def empty(self) -> bool:
        """True if the index answers every message."""
        return not (self.header_keys or self.body_keys or self.date_keys)


@dataclass(frozen=True)
class _Snapshot:
    """The view's arrays at the start of a search (an expunge replaces them, so the
    positions stay valid for the whole search)."""

    uids: Sequence[int]
    flags: Sequence[int]
    keywords: Sequence[tuple[str, ...]]
    modseqs: Sequence[int]
    sizes: Sequence[int]
    dates: Sequence[int]
    count: int

    @classmethod
    def of(cls, view: MailboxView) -> _Snapshot:
        return cls(
            view.uids,
            view.flags,
            view.keywords,
            view.modseqs,
            view.sizes,
            view.dates,
            len(view.uids),
        )


def _day_start(day: datetime.date, tz: datetime.tzinfo) -> int:
    return int(datetime.datetime.combine(day, datetime.time(), tzinfo=tz).timestamp())


def _compare_day(op: str, value: datetime.date, day: datetime.date) -> bool:
    if op == "before":
        return value < day
    if op == "on":
        return value == day
    return value >= day


class _Compiler:
    """Turns a criteria tree into a :data:`Test` and collects its content keys."""

    def __init__(self, snap: _Snapshot, tz: datetime.tzinfo) -> None:
        self.snap = snap
        self.tz = tz
        self.plan = ContentPlan({}, {}, [])

    def compile(self, c: Criterion) -> Test:
        s = self.snap
        match c:
            case All():
                return lambda i, k: True
            case UidSet(ranges):
                return self._uid_set(ranges)
            case HasFlag(bit, present):
                flags = s.flags
                return lambda i, k: bool(flags[i] & bit) == present
            case HasKeyword(name, present):
                kws = s.keywords
                low = name.lower()
                return lambda i, k: any(w.lower() == low for w in kws[i]) == present
            case InternalDate(op, day):
                return self._internal_date(op, day)
            case Size(op, n):
                sizes = s.sizes
                if op == "larger":
                    return lambda i, k: sizes[i] > n
                return lambda i, k: sizes[i] < n
            case ModSeq(low_modseq):
                modseqs = s.modseqs
                return lambda i, k: modseqs[i] >= low_modseq
            case SentDate():
                if c not in self.plan.date_keys:
                    self.plan.date_keys.append(c)
                return _content(c)
            case Header(name, value):
                self.plan.header_keys[c] = SearchKey(SearchField.HEADER, value, header=name)
                return _content(c)
            case Text(field, value):
                if not value:
                    return lambda i, k: True  # every message contains ""
                key = SearchKey(_TEXT_FIELDS[field], value)
                if field in ("body", "text"):
                    self.plan.body_keys[c] = key
                else:
                    self.plan.header_keys[c] = key
                return _content(c)
            case Not(inner):
                return _not(self.compile(inner))
            case Or(a, b):
                return _or(self.compile(a), self.compile(b))
            case And(items):
                return _and([self.compile(x) for x in items])
        raise TypeError(f"not a search criterion: {c!r}")

    def _uid_set(self, ranges: tuple[tuple[int, int], ...]) -> Test:
        merged: list[list[int]] = []
        for a, b in sorted((min(r), max(r)) for r in ranges):
            if merged and a <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        starts = [r[0] for r in merged]
        ends = [r[1] for r in merged]
        uids = self.snap.uids

        def test(i: int, k: Known) -> Verdict:
            uid = uids[i]
            j = bisect.bisect_right(starts, uid) - 1
            return j >= 0 and uid <= ends[j]

        return test

    def _internal_date(self, op: str, day: datetime.date) -> Test:
        dates = self.snap.dates
        start = _day_start(day, self.tz)
        end = _day_start(day + datetime.timedelta(days=1), self.tz)
        if op == "before":
            return lambda i, k: dates[i] < start
        if op == "on":
            return lambda i, k: start <= dates[i] < end
        return lambda i, k: dates[i] >= start


def _content(c: Criterion) -> Test:
    return lambda i, k: k.get(c)


def _not(t: Test) -> Test:
    def test(i: int, k: Known) -> Verdict:
        v = t(i, k)
        return None if v is None else not v

    return test


def _or(a: Test, b: Test) -> Test:
    def test(i: int, k: Known) -> Verdict:
        x = a(i, k)
        if x is True:
            return True
        y = b(i, k)
        if y is True:
            return True
        return None if x is None or y is None else False

    return test


def _and(tests: list[Test]) -> Test:
    def test(i: int, k: Known) -> Verdict:
        result: Verdict = True
        for t in tests:
            v = t(i, k)
            if v is False:
                return False
            if v is None:
                result = None
        return result

    return test


def compile_criteria(
    criteria: Criterion, view: MailboxView, tz: datetime.tzinfo = datetime.UTC
) -> tuple[Test, ContentPlan]:
    """Compile ``criteria`` against ``view`` (exposed for tests and EXPLAIN-like tools).

    Returns:
        The test over view positions and the content keys it may need.
    """
    compiler = _Compiler(_Snapshot.of(view), tz)
    return compiler.compile(criteria), compiler.plan


# ----------------------------------------------------------------- content stage


def envelope_date(envelope: bytes) -> bytes | None:
    """The Date value of a rendered ENVELOPE (its first item), or None for NIL.

    Raises:
        ValueError: the envelope does not start the way Dovecot renders it.
    """
    if envelope.startswith(b"(NIL"):
        return None
    if envelope.startswith(b'("'):
        out = bytearray()
        i = 2
        while i < len(envelope):
            ch = envelope[i]
            if ch == 0x5C:  # backslash
                i += 1
                out.append(envelope[i])
            elif ch == 0x22:
                return bytes(out)
            else:
                out.append(ch)
            i += 1
    elif envelope.startswith(b"({"):
        close = envelope.index(b"}\r\n")
        size = int(envelope[2:close])
        return envelope[close + 3 : close + 3 + size]
    raise ValueError("not an ENVELOPE")


def _cached_sent_day(record: MailRecord) -> datetime.date | None:
    """The sent day from the cached ENVELOPE, or None when it has to be read."""
    if not record.cache:
        return None
    try:
        value = envelope_date(MessageSummary.from_bytes(record.cache).envelope)
    except (ValueError, IndexError):
        return None
    if value is None:
        return NO_DATE
    return sent_date(value) or NO_DATE


def _header_sent_day(header: bytes) -> datetime.date:
    fields, _complete = parse_header_block(header)
    values = find_values(fields, b"date")
    if not values:
        return NO_DATE
    return sent_date(values[0]) or NO_DATE


def _date_results(plan: ContentPlan, day: datetime.date) -> dict[Criterion, bool]:
    return {c: _compare_day(c.op, day, c.day) for c in plan.date_keys}


async def _read_content(
    mailbox: Mailbox,
    record: MailRecord,
    position: int,
    test: Test,
    plan: ContentPlan,
    known: dict[Criterion, bool],
    readahead: int,
) -> bool:
    """Read as much of the message as the verdict needs; False if it was expunged."""
    msg = await open_record(mailbox, record, want_body=bool(plan.body_keys))
    if msg is None:
        return False
    try:
        body_keys = list(plan.body_keys.items())
        header_keys = list(plan.header_keys.items())
        stream = msg.open_body(0, None, readahead=readahead if body_keys else HEADER_READ)
        head = BodyMatcher([k for _c, k in header_keys]) if header_keys else None
        dates = HeaderCollector() if plan.date_keys and plan.date_keys[0] not in known else None
        body = BodyMatcher([k for _c, k in body_keys]) if body_keys else None
        in_header = True
        budget = YIELD_EVERY
        while True:
            chunk = await stream.aread()
            budget -= len(chunk)
            if budget <= 0:  # matching is CPU work: let the loop run now and then
                budget = YIELD_EVERY
                await asyncio.sleep(0)
            if head is not None and not head.done:
                head.feed(chunk)
            if dates is not None:
                dates.feed(chunk)
            if body is not None and not body.done:
                body.feed(chunk)
            if in_header and (
                not chunk or ((head is None or head.done) and (dates is None or dates.done))
            ):
                in_header = False
                if head is not None:
                    known.update(zip([c for c, _k in header_keys], head.finish(), strict=True))
                if dates is not None:
                    known.update(_date_results(plan, _header_sent_day(dates.result())))
                verdict = test(position, known)
                if verdict is not None or body is None:
                    return bool(verdict)
            if body is not None and not in_header and (body.done or not chunk):
                known.update(zip([c for c, _k in body_keys], body.finish(), strict=True))
                return bool(test(position, known))
            if not chunk:
                return bool(test(position, known))
    finally:
        await msg.aclose()


# ------------------------------------------------------------------------ search


@dataclass
class _Entry:
    uid: int
    verdict: Verdict


@dataclass
class _Pending:
    entry: _Entry
    record: MailRecord
    position: int
    known: dict[Criterion, bool]


class _Scan:
    """Walks the candidate positions in batches, deciding what the index (and cache) can."""

    def __init__(
        self,
        mailbox: Mailbox,
        snap: _Snapshot,
        test: Test,
        plan: ContentPlan,
        uids: Sequence[int] | None,
    ) -> None:
        self.mailbox = mailbox
        self.snap = snap
        self.test = test
        self.plan = plan
        if uids is None:
            self._positions: Sequence[int] = range(snap.count)
        else:
            found: set[int] = set()
            for uid in uids:
                i = bisect.bisect_left(snap.uids, uid, 0, snap.count)
                if i < snap.count and snap.uids[i] == uid:
                    found.add(i)
            self._positions = sorted(found)
        self._next = 0

    @property
    def exhausted(self) -> bool:
        return self._next >= len(self._positions)

    async def step(
        self, order: collections.deque[_Entry], waiting: collections.deque[_Pending]
    ) -> None:
        """Decide the next batch.

        Every match and every undecided message goes to ``order`` (ascending), the
        undecided ones also to ``waiting`` (content to read).
        """
        batch = self._positions[self._next : self._next + SCAN_BATCH]
        self._next += len(batch)
        uids = self.snap.uids
        test = self.test
        undecided: list[tuple[int, _Entry]] = []
        for i in batch:
            v = test(i, _NOTHING)
            if v is None:  # its place in the order is kept until it is decided
                entry = _Entry(uids[i], None)
                order.append(entry)
                undecided.append((i, entry))
            elif v:
                order.append(_Entry(uids[i], True))
        if not undecided:
            await asyncio.sleep(0)  # let the loop run between batches
            return
        wanted = [entry.uid for _i, entry in undecided]
        records = {r.uid: r for r in await self.mailbox.records(wanted)}
        for i, entry in undecided:
            rec = records.get(entry.uid)
            if rec is None:
                entry.verdict = False  # expunged meanwhile
                continue
            known: dict[Criterion, bool] = {}
            if self.plan.date_keys:
                day = _cached_sent_day(rec)
                if day is not None:
                    known = _date_results(self.plan, day)
                    entry.verdict = test(i, known)
                    if entry.verdict is not None:
                        continue
            waiting.append(_Pending(entry, rec, i, known))


async def search(
    mailbox: Mailbox,
    criteria: Criterion,
    *,
    uids: Sequence[int] | None = None,
    prefetch: int | None = None,
    tz: datetime.tzinfo = datetime.UTC,
    readahead: int | None = None,
) -> AsyncGenerator[int, None]:
    """Yield the UIDs of the messages matching ``criteria``, ascending, as decided.

    See the module docstring for the stages and the order of results.

    Args:
        mailbox: The mailbox; its view (as of the call) is searched.
        criteria: The criteria tree.
        uids: Only these UIDs (any order; those not in the view are ignored).
        prefetch: Content reads in flight at most (default: ``storage.prefetch``).
        tz: Zone in which internal dates fall on a day (BEFORE/ON/SINCE).
        readahead: Read size for body keys (default: ``storage.readahead``).

    Yields:
        Matching UIDs in ascending order; messages expunged meanwhile never match.

    Raises:
        CorruptedMessage: a message whose content was needed is damaged.
        StorageUnavailable: an I/O error while reading one.
        ValueError: ``prefetch`` < 1.
    """
    depth = prefetch_depth(mailbox, prefetch)
    chunk = readahead if readahead is not None else mailbox.user.storage.config.readahead
    compiler = _Compiler(_Snapshot.of(mailbox.view), tz)
    test = compiler.compile(criteria)
    plan = compiler.plan
    scan = _Scan(mailbox, compiler.snap, test, plan, uids)
    order: collections.deque[_Entry] = collections.deque()
    waiting: collections.deque[_Pending] = collections.deque()
    running: dict[asyncio.Task[bool], _Entry] = {}
    loop = asyncio.get_running_loop()
    try:
        while True:
            while order and order[0].verdict is not None:
                entry = order.popleft()
                if entry.verdict:
                    yield entry.uid
            while waiting and len(running) < depth:
                p = waiting.popleft()
                task = loop.create_task(
                    _read_content(mailbox, p.record, p.position, test, plan, p.known, chunk)
                )
                running[task] = p.entry
            if not scan.exhausted and len(waiting) < depth:
                await scan.step(order, waiting)
                continue
            if not running:
                break
            done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            error: BaseException | None = None
            for task in done:
                entry = running.pop(task)
                exc = asyncio.CancelledError() if task.cancelled() else task.exception()
                if exc is not None:
                    error = error or exc
                else:
                    entry.verdict = task.result()
            if error is not None:
                raise error
    finally:
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
