"""Mailbox.search: index keys without I/O, content keys with bounded prefetch, and
results equal to a naive full-read search (stdlib ``email``) on generated mail."""

from __future__ import annotations

import asyncio
import datetime as dt
import email
import email.policy
import email.utils
import gc
import random
import tempfile
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aiodbox.storage import Storage
from aiodbox.storage import search as S
from aiodbox.storage.fetch import FetchParts
from aiodbox.storage.mailbox import Mailbox
from aiodbox.storage.search import (
    All,
    And,
    Criterion,
    HasFlag,
    HasKeyword,
    Header,
    InternalDate,
    ModSeq,
    Not,
    Or,
    SentDate,
    Size,
    Text,
    UidSet,
    envelope_date,
)

from .storage_testlib import CountingFS, fill, make_storage, simple_message
from .test_fetch import OpenCounter, settle, stray_tasks

Factory = Callable[..., tuple[Storage, CountingFS]]
UTC = dt.UTC

# --------------------------------------------------------------------- the corpus

WORDS = ["alpha", "Beta", "gamma", "déjà", "Ärger", "naïve", "CAFÉ", "straße", "zoë", "quokka"]
LATIN1 = [w for w in WORDS if all(ord(c) < 256 for c in w)]
KEYWORDS = ["$Label1", "$Forwarded", "Work"]
DAYS = [dt.date(2024, 1, d) for d in (1, 2, 3, 5, 8)]


@dataclass
class Sample:
    """One generated message, what the index will say about it, and the message as the
    stdlib decodes it whole (done while hypothesis draws, not on the event loop)."""

    data: bytes
    flags: int
    keywords: tuple[str, ...]
    internal_date: int
    decoded: Decoded


@st.composite
def text_part(draw: st.DrawFn) -> EmailMessage:
    charset = draw(st.sampled_from(["utf-8", "iso-8859-1"]))
    pool = WORDS if charset == "utf-8" else LATIN1
    words = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=60))
    text = " ".join(words) + "\n"
    cte = draw(st.sampled_from(["base64", "quoted-printable", "8bit"]))
    part = EmailMessage()
    part.set_content(
        text, subtype=draw(st.sampled_from(["plain", "html"])), charset=charset, cte=cte
    )
    return part


@st.composite
def sample(draw: st.DrawFn) -> Sample:
    parts = draw(st.lists(text_part(), min_size=1, max_size=3))
    msg = EmailMessage()
    msg["Subject"] = " ".join(draw(st.lists(st.sampled_from(WORDS), min_size=1, max_size=5)))
    msg["From"] = draw(st.sampled_from(["Zoë Ärger <zoe@example.test>", "beta@example.test"]))
    msg["To"] = draw(st.sampled_from(["gamma <g@example.test>", "team@example.test"]))
    if draw(st.booleans()):
        msg["Cc"] = "Café Crew <crew@example.test>"
    if draw(st.booleans()):
        day = draw(st.sampled_from(DAYS))
        hour = draw(st.integers(0, 23))
        tz = dt.timezone(dt.timedelta(hours=draw(st.integers(-11, 12))))
        msg["Date"] = email.utils.format_datetime(
            dt.datetime(2024, 1, day.day, hour, 30, tzinfo=tz)
        )
    if draw(st.booleans()):
        msg["X-Project"] = draw(st.sampled_from(WORDS))
    if len(parts) == 1:
        body = parts[0]
        msg.set_content(
            body.get_content(),
            subtype=body.get_content_subtype(),
            charset=body.get_content_charset(),
            cte=body["Content-Transfer-Encoding"],
        )
    else:
        msg.make_mixed()
        msg.set_boundary("==aiodbox-search-test==")
        for p in parts:
            msg.attach(p)
        if draw(st.booleans()):  # an attachment that BODY never looks into
            msg.attach(_binary_part())
    data = msg.as_bytes(policy=email.policy.SMTP)
    flags = draw(st.integers(0, 31))
    keywords = tuple(draw(st.lists(st.sampled_from(KEYWORDS), unique=True, max_size=2)))
    day = draw(st.sampled_from(DAYS))
    seconds = draw(st.integers(0, 86399))
    internal = int(dt.datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()) + seconds
    return Sample(data, flags, keywords, internal, decode(data))


def _binary_part() -> EmailMessage:
    part = EmailMessage()
    part.set_content(b"quokka alpha " * 20, maintype="application", subtype="octet-stream")
    return part


def needle() -> st.SearchStrategy[str]:
    word = st.sampled_from(WORDS)
    sub = st.tuples(word, st.integers(0, 3), st.integers(2, 4)).map(
        lambda t: t[0][t[1] : t[1] + t[2]] or t[0]
    )
    case = st.sampled_from([str.upper, str.lower, str.title, lambda s: s])
    return st.one_of(word, sub, st.just("nomatch-xyz")).flatmap(lambda w: case.map(lambda f: f(w)))


def leaf(max_uid: int) -> st.SearchStrategy[Criterion]:
    uid = st.integers(1, max_uid + 2)
    return st.one_of(
        st.just(All()),
        st.lists(st.tuples(uid, uid), min_size=1, max_size=3).map(lambda r: UidSet(tuple(r))),
        st.builds(HasFlag, st.sampled_from([1, 2, 4, 8, 16]), st.booleans()),
        st.builds(HasKeyword, st.sampled_from([*KEYWORDS, "$label1", "none"]), st.booleans()),
        st.builds(InternalDate, st.sampled_from(["before", "on", "since"]), st.sampled_from(DAYS)),
        st.builds(SentDate, st.sampled_from(["before", "on", "since"]), st.sampled_from(DAYS)),
        st.builds(Size, st.sampled_from(["larger", "smaller"]), st.integers(300, 3000)),
        st.builds(ModSeq, st.integers(1, 4)),
        st.builds(
            Header,
            st.sampled_from(["Subject", "x-project", "Cc", "Date", "X-Missing"]),
            st.one_of(st.just(""), needle()),
        ),
        st.builds(
            Text,
            st.sampled_from(["from", "to", "cc", "bcc", "subject", "body", "text"]),
            needle(),
        ),
    )


def criteria(max_uid: int) -> st.SearchStrategy[Criterion]:
    return st.recursive(
        leaf(max_uid),
        lambda inner: st.one_of(
            inner.map(Not),
            st.builds(Or, inner, inner),
            st.lists(inner, max_size=3).map(lambda xs: And(tuple(xs))),
        ),
        max_leaves=5,
    )


# ------------------------------------------------------------ the naive reference


def fold(text: str) -> str:
    return unicodedata.normalize("NFKD", text.casefold())


@dataclass(frozen=True)
class Decoded:
    """Everything a search can look at, decoded whole by the stdlib ``email`` package
    and folded for comparison."""

    top_headers: tuple[tuple[str, str], ...]
    """(lowercase name, folded decoded value) of the message's own header fields."""
    text_lines: tuple[str, ...]
    """Folded ``Name: value`` of every header field of every part (TEXT)."""
    texts: tuple[str, ...]
    """Folded decoded content of every text part (BODY)."""
    sent_day: dt.date


def decode(data: bytes) -> Decoded:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    date = msg.get("Date")
    sent = (
        dt.date(1970, 1, 1) if date is None else email.utils.parsedate_to_datetime(str(date)).date()
    )
    return Decoded(
        tuple((k.lower(), fold(str(v))) for k, v in msg.items()),
        tuple(fold(f"{k}: {v}") for part in msg.walk() for k, v in part.items()),
        tuple(
            fold(part.get_content())
            for part in msg.walk()
            if not part.is_multipart() and part.get_content_maintype() == "text"
        ),
        sent,
    )


@dataclass
class Ref:
    """A message with its index data."""

    uid: int
    size: int
    flags: int
    keywords: tuple[str, ...]
    modseq: int
    internal_date: int
    d: Decoded

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.d.top_headers if k == name.lower()]


def reference(c: Criterion, m: Ref) -> bool:
    match c:
        case All():
            return True
        case UidSet(ranges):
            return any(min(r) <= m.uid <= max(r) for r in ranges)
        case HasFlag(bit, present):
            return bool(m.flags & bit) == present
        case HasKeyword(name, present):
            return (name.lower() in {k.lower() for k in m.keywords}) == present
        case InternalDate(op, day):
            return S._compare_day(op, dt.datetime.fromtimestamp(m.internal_date, UTC).date(), day)
        case SentDate(op, day):
            return S._compare_day(op, m.d.sent_day, day)
        case Size(op, n):
            return m.size > n if op == "larger" else m.size < n
        case ModSeq(low):
            return m.modseq >= low
        case Header(name, value):
            values = m.header(name)
            return any(fold(value) in v for v in values) if value else bool(values)
        case Text(field, value):
            if field == "body":
                return any(fold(value) in t for t in m.d.texts)
            if field == "text":
                return any(fold(value) in t for t in m.d.text_lines + m.d.texts)
            return any(fold(value) in v for v in m.header(field))
        case Not(inner):
            return not reference(inner, m)
        case Or(a, b):
            return reference(a, m) or reference(b, m)
        case And(items):
            return all(reference(x, m) for x in items)
    raise AssertionError(c)


async def references(mbox: Mailbox, samples: list[Sample], uids: list[int]) -> list[Ref]:
    await mbox.sync()
    view = mbox.view
    out = []
    for s, uid in zip(samples, uids, strict=True):
        i = view.index_of(uid)
        assert i is not None
        out.append(
            Ref(
                uid,
                len(s.data),
                view.flags[i],
                view.keywords[i],
                view.modseqs[i],
                s.internal_date,
                s.decoded,
            )
        )
    return out


# ------------------------------------------------------------------ the property


async def _populate(mbox: Mailbox, samples: list[Sample]) -> list[int]:
    tx = mbox.transaction()
    for s in samples:
        await tx.save(s.data, flags=s.flags, keywords=s.keywords, internal_date=s.internal_date)
    uids = (await tx.commit()).saved_uids
    # A later flag change gives some messages a higher modseq.
    await mbox.store(uids[::3], "add", 2)
    return uids


@pytest.mark.parametrize("fmt", ["sdbox", "mdbox"])
@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    samples=st.lists(sample(), min_size=1, max_size=10),
    queries=st.lists(criteria(12), min_size=1, max_size=4),
    depth=st.integers(1, 6),
    seed=st.integers(0, 1000),
    cached=st.booleans(),
)
async def test_search_equals_naive_full_read(
    fmt: str,
    samples: list[Sample],
    queries: list[Criterion],
    depth: int,
    seed: int,
    cached: bool,
) -> None:
    # What hypothesis built so far is not garbage: keep full collections (blamed on
    # whichever loop step they hit) short, as tests/conftest.py does per test.
    gc.freeze()
    with tempfile.TemporaryDirectory() as tmp:
        spec = f"latency:1ms,jitter=2ms,seed={seed}:memory"
        # A tiny readahead makes body search stream every message in many chunks.
        storage, _fs = make_storage(Path(tmp), fmt, spec, prefetch=depth, readahead=256)
        try:
            mbox = await (await storage.user("u")).open_mailbox("INBOX")
            uids = await _populate(mbox, samples)
            if cached:  # SENT* then come from the cached envelope
                async for f in mbox.fetch_many(uids, FetchParts(structure=True)):
                    assert f.summary is not None
            refs = await references(mbox, samples, uids)
            for q in queries:
                got = [u async for u in mbox.search(q)]
                want = [r.uid for r in refs if reference(q, r)]
                assert got == want, q
            await mbox.close()
        finally:
            await storage.close()


# ---------------------------------------------------------- I/O only when needed


async def _mailbox(
    factory: Factory, closing: list[Storage], fmt: str, spec: str, n: int, **kw: int
) -> tuple[Mailbox, CountingFS, list[int]]:
    storage, fs = factory(fmt, spec, **kw)
    closing.append(storage)
    mbox = await (await storage.user("alice")).open_mailbox("INBOX")
    data = [simple_message(i, 2000 + 300 * (i % 5)) for i in range(n)]
    base = int(dt.datetime(2024, 1, 1, tzinfo=UTC).timestamp())
    uids: list[int] = []
    for i, d in enumerate(data):
        uids += await fill(mbox, [d], internal_date=base + 86400 * (i % 4))
    await mbox.store(uids[::2], "add", 1)  # every other message \Seen
    await mbox.store(uids[1::3], "add", 0, ["$Label1"])
    return mbox, fs, uids


@pytest.mark.parametrize("fmt", ["sdbox", "mdbox"])
async def test_index_keys_do_no_io(
    fmt: str, storage_factory: Factory, closing: list[Storage]
) -> None:
    mbox, fs, uids = await _mailbox(storage_factory, closing, fmt, "latency:1ms:posix", 20)
    view = mbox.view
    q = And(
        (
            Or(HasFlag(1, False), HasKeyword("$label1")),
            Not(UidSet(((uids[3], uids[5]),))),
            InternalDate("since", dt.date(2024, 1, 2)),
            Size("larger", 100),
            ModSeq(1),
        )
    )
    fs.counters.reset()
    got = [u async for u in mbox.search(q)]
    assert (fs.counters.opens, fs.counters.preads) == (0, 0)
    want = [
        view.uids[i]
        for i in range(len(view))
        if (not view.flags[i] & 1 or "$Label1" in view.keywords[i])
        and not uids[3] <= view.uids[i] <= uids[5]
        and view.dates[i] >= int(dt.datetime(2024, 1, 2, tzinfo=UTC).timestamp())
    ]
    assert got == want and got


@pytest.mark.parametrize("fmt", ["sdbox", "mdbox"])
async def test_index_keys_short_circuit_content(
    fmt: str, storage_factory: Factory, closing: list[Storage]
) -> None:
    mbox, _fs, uids = await _mailbox(storage_factory, closing, fmt, "latency:1ms:memory", 20)
    counter = OpenCounter(mbox)
    unseen = [u for i, u in enumerate(uids) if i % 2]
    # UNSEEN BODY "message 7": only the unseen messages are read
    got = [u async for u in mbox.search(And((HasFlag(1, False), Text("body", "MESSAGE 7 "))))]
    assert got == [uids[7]]
    assert counter.opened == len(unseen)
    # SEEN OR BODY x: the seen ones are decided by the index
    counter.opened = 0
    got = [u async for u in mbox.search(Or(HasFlag(1), Text("body", "message 3 ")))]
    assert got == sorted([*uids[::2], uids[3]])
    assert counter.opened == len(unseen)
    # NOT ALL: nothing to read
    counter.opened = 0
    assert [u async for u in mbox.search(Not(All()))] == []
    assert [u async for u in mbox.search(Text("body", ""))] == uids
    assert counter.opened == 0


async def test_header_keys_read_only_the_header(
    storage_factory: Factory, closing: list[Storage]
) -> None:
    mbox, fs, _uids = await _mailbox(storage_factory, closing, "sdbox", "posix", 0)
    big = simple_message(1, 3_000_000)
    (uid,) = await fill(mbox, [big])
    fs.counters.reset()
    assert [u async for u in mbox.search(Text("subject", "NUMBER 1"))] == [uid]
    assert fs.counters.bytes_read < 20_000
    assert [u async for u in mbox.search(Header("X-Missing", ""))] == []
    assert [u async for u in mbox.search(SentDate("on", dt.date(2024, 1, 2)))] == [uid]
    # BODY stops at the first match (near the start of a 3 MB body)
    fs.counters.reset()
    assert [u async for u in mbox.search(Text("body", "line of message 1"))] == [uid]
    assert fs.counters.bytes_read < 200_000
    # ... and reads to the end when there is none
    fs.counters.reset()
    assert [u async for u in mbox.search(Text("body", "not there"))] == []
    assert fs.counters.bytes_read > 3_000_000


async def test_sent_date_from_cached_envelope(
    storage_factory: Factory, closing: list[Storage]
) -> None:
    mbox, fs, uids = await _mailbox(storage_factory, closing, "mdbox", "latency:1ms:posix", 6)
    q = SentDate("since", dt.date(2024, 1, 2))
    before = [u async for u in mbox.search(q)]
    assert before == uids
    async for _f in mbox.fetch_many(uids, FetchParts(structure=True)):
        pass
    fs.counters.reset()
    assert [u async for u in mbox.search(q)] == before
    assert [u async for u in mbox.search(SentDate("before", dt.date(2024, 1, 2)))] == []
    assert fs.counters.preads == 0


def test_envelope_date_forms() -> None:
    assert envelope_date(b'("Tue, 2 Jan 2024" NIL)') == b"Tue, 2 Jan 2024"
    assert envelope_date(b'("a \\"q\\" \\\\b" NIL)') == b'a "q" \\b'
    assert envelope_date(b"(NIL NIL)") is None
    assert envelope_date(b"({3}\r\nabc NIL)") == b"abc"
    with pytest.raises(ValueError):
        envelope_date(b"garbage")


def test_criteria_validate() -> None:
    with pytest.raises(ValueError):
        InternalDate("after", dt.date(2024, 1, 1))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Text("header", "x")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Size("bigger", 3)  # type: ignore[arg-type]


async def test_internal_date_time_zone(storage_factory: Factory, closing: list[Storage]) -> None:
    storage, _fs = storage_factory("sdbox", "memory")
    closing.append(storage)
    mbox = await (await storage.user("alice")).open_mailbox("INBOX")
    late = int(dt.datetime(2024, 1, 1, 23, 30, tzinfo=UTC).timestamp())
    (uid,) = await fill(mbox, [simple_message(1)], internal_date=late)
    q = InternalDate("on", dt.date(2024, 1, 2))
    assert [u async for u in mbox.search(q)] == []
    plus_one = dt.timezone(dt.timedelta(hours=1))
    assert [u async for u in mbox.search(q, tz=plus_one)] == [uid]


# ------------------------------------------------------ order, bound, cancellation


@pytest.mark.parametrize("fmt", ["sdbox", "mdbox"])
@pytest.mark.parametrize("seed", [1, 2])
async def test_ascending_results_under_jitter_and_bounded(
    fmt: str, seed: int, storage_factory: Factory, closing: list[Storage]
) -> None:
    spec = f"latency:2ms,jitter=8ms,seed={seed}:posix"
    mbox, fs, uids = await _mailbox(
        storage_factory, closing, fmt, spec, 36, prefetch=5, readahead=512
    )
    counter = OpenCounter(mbox)
    q = Or(Text("body", "message 1"), HasKeyword("$Label1"))  # body read for most of them
    results: list[int] = []
    async for uid in mbox.search(q, uids=[*reversed(uids), 9999]):
        assert counter.open <= 5
        results.append(uid)
    assert results == sorted(results)
    expected = [u for i, u in enumerate(uids) if str(i).startswith("1") or i % 3 == 1]
    assert results == expected
    assert 1 < counter.max_open <= 5
    # mdbox: the cached reader of m.1 and the spare kept open by the saves
    assert fs.counters.open_handles == (0 if fmt == "sdbox" else 2)


@pytest.mark.parametrize("fmt", ["sdbox", "mdbox"])
async def test_cancelled_search_leaves_nothing(
    fmt: str, storage_factory: Factory, closing: list[Storage]
) -> None:
    mbox, fs, _uids = await _mailbox(
        storage_factory, closing, fmt, "latency:3ms,jitter=3ms,seed=9:posix", 40, prefetch=6
    )
    counter = OpenCounter(mbox)
    first = asyncio.Event()

    async def consume() -> None:
        async for _uid in mbox.search(Not(Text("body", "message 3"))):
            first.set()

    task = asyncio.create_task(consume())
    await first.wait()
    await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await settle()
    assert not stray_tasks()
    assert counter.open == 0
    # mdbox: the cached reader of m.1 and the spare kept open by the saves
    assert fs.counters.open_handles == (0 if fmt == "sdbox" else 2)


async def test_search_of_an_expunged_message_does_not_match(
    storage_factory: Factory, closing: list[Storage]
) -> None:
    mbox, _fs, uids = await _mailbox(storage_factory, closing, "sdbox", "latency:1ms:posix", 5)
    original = mbox.open_message
    victim = uids[2]

    async def expunge_first(record: Any, **kwargs: Any) -> Any:
        if record.uid == victim:
            await mbox.expunge([victim], deleted_only=False)
        return await original(record, **kwargs)

    mbox.open_message = expunge_first  # type: ignore[method-assign]
    assert [u async for u in mbox.search(Text("body", "line"))] == [u for u in uids if u != victim]


def test_random_trees_compile() -> None:
    """The three-valued evaluation never decides a content key without content."""
    from aiodbox.storage.view import MailboxView

    view = MailboxView(1, 1)
    view.load([(1, 1, "", 1, 10, 0), (2, 0, "Work", 2, 20, 86400)], 2, 3, "Work")
    rng = random.Random(3)
    body = Text("body", "x")
    for _ in range(200):
        seen = HasFlag(1, rng.random() < 0.5)
        tree = rng.choice([And((seen, body)), Or(seen, body), Not(And((seen, Not(body))))])
        test, plan = S.compile_criteria(tree, view)
        assert list(plan.body_keys) == [body]
        for i in range(2):
            verdict = test(i, {})
            full = [test(i, {body: v}) for v in (False, True)]
            assert None not in full
            if verdict is not None:
                assert full == [verdict, verdict]  # decided: content cannot change it
