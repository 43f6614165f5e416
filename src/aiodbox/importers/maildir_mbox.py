"""Maildir and mbox import through the stdlib :mod:`mailbox` module; Maildir formats.

Theory of operation
===================

The stdlib :mod:`mailbox` module is blocking, so it runs in one worker thread per import
(:class:`ThreadFeed`).  The thread lists and reads the source and hands each message, whole
and already converted to CRLF line ends, to the event loop through a queue bounded by a
byte and item budget: the thread blocks when the loop falls behind, so at most a few
messages are in memory at a time, never a mailbox.  The loop side saves them with
:class:`~aiodbox.importers.target.BatchSaver` (one transaction per ``batch`` messages).

**Maildir import.**  Messages come from ``cur/`` and ``new/`` (``tmp/`` is ignored).  A
Maildir++ root's subfolders ``.Sub.Folder`` become mailboxes ``Sub/Folder`` (under
``--mailbox`` when one is given; the root itself is INBOX or ``--mailbox``).  Folder
levels are modified UTF-7 as Dovecot writes them; ``%2E`` stands for ``.`` (how
:func:`export_maildir` writes names with dots; aiodbox names cannot hold ``%``).  System
flags come from the info suffix ``:2,`` (``D F R S T`` → ``\\Draft \\Flagged \\Answered
\\Seen \\Deleted``; ``P``, passed, has no IMAP flag and is dropped); lowercase letters are
keywords when the folder has Dovecot's ``dovecot-keywords`` file (``<index> <name>`` per
line, ``a`` = 0), otherwise they are lost (reported).  INTERNALDATE is the file's mtime.
When the folder has Dovecot's ``dovecot-uidlist`` (``3 V<uidvalidity> N<uidnext>
G<guid>`` then ``<uid> [G<guid>] [W<size>] :<base name>`` per message) and the target
mailbox is new or empty, the UIDs, UIDVALIDITY, UIDNEXT, mailbox GUID and message GUIDs
are kept (messages the list does not know get UIDs after the listed ones); if the target
already has that UIDVALIDITY and GUID, an earlier import is resumed at its UIDNEXT.
Otherwise messages get new UIDs in (mtime, name) order, appended to what the target holds.
The root's ``subscriptions`` file (Dovecot's format) is read too.

**mbox import.**  One file, into INBOX or ``--mailbox``.  INTERNALDATE comes from the
``From`` line (read as UTC, as the stdlib writes it), else the ``Date:`` header.  Flags
come from ``Status:`` (``R`` → \\Seen) and ``X-Status:`` (``A F T D`` → \\Answered
\\Flagged \\Draft \\Deleted), keywords from ``X-Keywords:``; these headers and Dovecot's
``X-UID``/``X-IMAP``/``X-IMAPbase`` are mail-store metadata and are removed from the
stored message, as Dovecot hides them.  ``>From`` quoting is left as found (mboxo and
mboxrd cannot be told apart); UIDs are new.

Export to Maildir++ is :mod:`aiodbox.importers.maildir_export`; it writes what this
module reads back.
"""

from __future__ import annotations

import asyncio
import base64
import calendar
import contextlib
import email.utils
import mailbox
import os
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Generic, TypeVar, cast

from aiodbox.importers.dovecot_list import decode_mutf7, parse_subscriptions
from aiodbox.importers.target import (
    DEFAULT_BATCH,
    GUID_RE,
    BatchSaver,
    ImportConflict,
    ImportReport,
    Incoming,
    MailboxResult,
    ProgressFactory,
    ProgressSink,
    SourceReadError,
    no_progress,
    prepare_mailbox,
)
from aiodbox.storage import names
from aiodbox.storage.errors import InvalidMailboxName

if TYPE_CHECKING:
    from aiodbox.storage.mailbox import Mailbox
    from aiodbox.storage.storage import Storage, User

__all__ = [
    "SourceLayoutError",
    "ThreadFeed",
    "check_maildir_source",
    "check_mbox_source",
    "import_maildir",
    "import_mbox",
    "maildir_folder_to_name",
    "name_to_maildir_folder",
]

T = TypeVar("T")

SEEN, ANSWERED, FLAGGED, DELETED, DRAFT = 1, 2, 4, 8, 16
"""aiodbox's flag bits (``aiodbox.index.schema.FLAG_BITS``)."""

_MAILDIR_FLAGS = {"D": DRAFT, "F": FLAGGED, "R": ANSWERED, "S": SEEN, "T": DELETED}
_MBOX_STATUS = {"R": SEEN}
_MBOX_XSTATUS = {"A": ANSWERED, "F": FLAGGED, "T": DRAFT, "D": DELETED}
_MBOX_META_HEADERS = frozenset(
    {b"status", b"x-status", b"x-keywords", b"x-uid", b"x-imap", b"x-imapbase"}
)
KEYWORD_LETTERS = "abcdefghijklmnopqrstuvwxyz"
UIDLIST_FILE = "dovecot-uidlist"
KEYWORDS_FILE = "dovecot-keywords"
SUBSCRIPTIONS_FILE = "subscriptions"
_BARE_LF = re.compile(rb"(?<!\r)\n")
_FROM_DATE = re.compile(
    r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)\s+([A-Z][a-z]{2})\s+(\d{1,2})\s+"
    r"(\d{1,2}):(\d{2})(?::(\d{2}))?\s+(?:[A-Z]{1,5}\s+|[+-]\d{4}\s+)?(\d{4})"
)
_MONTHS = {m: i for i, m in enumerate(calendar.month_abbr) if m}

FEED_MAX_BYTES = 32 << 20
"""Bytes of messages read ahead by the worker thread (a bigger message goes alone)."""
FEED_MAX_ITEMS = 16


class SourceLayoutError(Exception):
    """The path is not a Maildir (or Maildir++ root), or not an mbox file."""


def to_crlf(data: bytes) -> bytes:
    """Every bare LF becomes CRLF (IMAP bytes); existing CRLFs are kept."""
    return _BARE_LF.sub(b"\r\n", data)


# --------------------------------------------------------------------------- names


def mutf7_encode(text: str) -> str:
    """Modified UTF-7 (RFC 3501 §5.1.3), as Dovecot names Maildir++ folders."""
    out: list[str] = []
    run: list[str] = []

    def flush() -> None:
        if run:
            raw = "".join(run).encode("utf-16-be")
            out.append("&" + base64.b64encode(raw).rstrip(b"=").replace(b"/", b",").decode() + "-")
            run.clear()

    for ch in text:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            run.append(ch)
    flush()
    return "".join(out)


def name_to_maildir_folder(name: str) -> str:
    """``"A/B"`` → ``"A.B"`` (the directory is ``.A.B``); see the module docstring."""
    return ".".join(
        mutf7_encode(level.replace(".", "%2E")) for level in name.split(names.SEPARATOR)
    )


def maildir_folder_to_name(folder: str) -> str:
    """``"Sub.Folder"`` (directory ``.Sub.Folder``) → ``"Sub/Folder"``."""
    return names.SEPARATOR.join(
        re.sub("%2[eE]", ".", _decode(level)) for level in folder.split(".")
    )


# --------------------------------------------------------------------------- flags


def maildir_info_flags(info: str, keywords: Sequence[str] | None) -> tuple[int, list[str], str]:
    """Parse a Maildir info suffix (``"2,FS"``, without the colon).

    Args:
        info: The text after the colon.
        keywords: The folder's ``dovecot-keywords`` names (index = letter), or None.

    Returns:
        ``(flag bits, keywords, letters that could not be kept)``.
    """
    if not info.startswith("2,"):
        return 0, [], ""
    bits = 0
    kws: list[str] = []
    lost = ""
    for ch in info[2:]:
        if ch in _MAILDIR_FLAGS:
            bits |= _MAILDIR_FLAGS[ch]
        elif ch in KEYWORD_LETTERS:
            i = KEYWORD_LETTERS.index(ch)
            if keywords is not None and i < len(keywords) and keywords[i]:
                if keywords[i] not in kws:
                    kws.append(keywords[i])
            else:
                lost += ch
    return bits, kws, lost


def maildir_info(bits: int, letters: Iterable[str] = ()) -> str:
    """The info suffix for flag ``bits`` and keyword ``letters`` (ASCII order)."""
    chars = [ch for ch, bit in _MAILDIR_FLAGS.items() if bits & bit]
    return "2," + "".join(sorted(chars)) + "".join(sorted(set(letters)))


def mbox_flags(status: str, x_status: str) -> int:
    """Flag bits from mbox ``Status:`` and ``X-Status:`` values."""
    bits = 0
    for ch in status:
        bits |= _MBOX_STATUS.get(ch, 0)
    for ch in x_status:
        bits |= _MBOX_XSTATUS.get(ch, 0)
    return bits


def parse_from_line_date(line: str) -> int | None:
    """UNIX time of an mbox ``From sender Thu Jan  2 09:00:00 2024`` line (as UTC)."""
    m = _FROM_DATE.search(line)
    if m is None:
        return None
    month = _MONTHS.get(m.group(1))
    if month is None:
        return None
    try:
        return calendar.timegm(
            (
                int(m.group(6)),
                month,
                int(m.group(2)),
                int(m.group(3)),
                int(m.group(4)),
                int(m.group(5) or 0),
                0,
                0,
                0,
            )
        )
    except (ValueError, OverflowError):
        return None


# --------------------------------------------------------------------------- Dovecot files


@dataclass(frozen=True, slots=True)
class Uidlist:
    """A parsed ``dovecot-uidlist``.

    Attributes:
        uidvalidity: ``V``.
        uidnext: ``N``.
        guid: ``G`` (mailbox GUID), if valid.
        records: base file name → ``(uid, message GUID or None)``.
    """

    uidvalidity: int
    uidnext: int
    guid: str | None
    records: dict[str, tuple[int, str | None]]


def parse_uidlist(data: bytes) -> Uidlist | None:
    """Parse ``dovecot-uidlist`` versions 3 (Dovecot) and 1 (Courier); None if invalid."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    lines = text.split("\n")
    header = lines[0].split()
    if not header or header[0] not in ("1", "3"):
        return None
    v1 = header[0] == "1"
    fields: dict[str, str] = {}
    if v1:
        if len(header) < 3:
            return None
        fields = {"V": header[1], "N": header[2]}
    else:
        fields = {f[0]: f[1:] for f in header[1:] if f}
    try:
        uidvalidity = int(fields["V"])
        uidnext = int(fields.get("N", "0"))
    except (KeyError, ValueError):
        return None
    if not 0 < uidvalidity < 1 << 32:
        return None
    guid = fields.get("G", "").lower()
    records: dict[str, tuple[int, str | None]] = {}
    for line in lines[1:]:
        if not line:
            continue
        if v1:
            uid_text, _, fname = line.partition(" ")
            exts: list[str] = []
        else:
            head, sep, fname = line.partition(":")
            if not sep:
                continue
            uid_text, *exts = head.split()
        try:
            uid = int(uid_text)
        except ValueError:
            continue
        if uid <= 0 or not fname:
            continue
        msg_guid = next((e[1:].lower() for e in exts if e.startswith("G")), None)
        if msg_guid is not None and not GUID_RE.fullmatch(msg_guid):
            msg_guid = None
        records[fname.split(":")[0]] = (uid, msg_guid)
    return Uidlist(uidvalidity, uidnext, guid if GUID_RE.fullmatch(guid) else None, records)


def parse_keywords_file(data: bytes) -> list[str]:
    """``dovecot-keywords``: ``<index> <name>`` lines → names by index (gaps ``""``)."""
    found: dict[int, str] = {}
    for line in data.decode("utf-8", "replace").splitlines():
        idx, _, kw = line.partition(" ")
        if idx.isdigit() and kw.strip() and int(idx) < len(KEYWORD_LETTERS):
            found[int(idx)] = kw.strip()
    if not found:
        return []
    return [found.get(i, "") for i in range(max(found) + 1)]


# --------------------------------------------------------------------------- thread feed


class _Stopped(Exception):
    """The consumer went away; the producer thread ends."""


_END = object()


class ThreadFeed(Generic[T]):
    """Run a blocking producer in a worker thread; receive its items on the event loop.

    ``producer(put)`` calls ``put(item, size)`` for every item; ``put`` blocks the
    thread while more than ``max_items`` items or ``max_bytes`` bytes are waiting for the
    loop (an item bigger than ``max_bytes`` is let through alone).  Iterate with
    ``async for``; an exception of the producer is raised there after the items before
    it.  Leaving early (``aclose``) stops the producer at its next ``put``.
    """

    def __init__(
        self,
        producer: Callable[[Callable[[T, int], None]], None],
        *,
        max_items: int = FEED_MAX_ITEMS,
        max_bytes: int = FEED_MAX_BYTES,
    ) -> None:
        self._producer = producer
        self._max_items = max_items
        self._max_bytes = max_bytes
        self._cond = threading.Condition()
        self._items = 0
        self._bytes = 0
        self._stop = False
        self._queue: asyncio.Queue[tuple[object, int]] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self._held = 0
        self._task: asyncio.Future[None] = asyncio.ensure_future(asyncio.to_thread(self._run))

    def _put(self, item: T, size: int) -> None:
        with self._cond:
            while (
                not self._stop
                and self._items
                and (self._items >= self._max_items or self._bytes + size > self._max_bytes)
            ):
                self._cond.wait()
            if self._stop:
                raise _Stopped
            self._items += 1
            self._bytes += size
        self._loop.call_soon_threadsafe(self._queue.put_nowait, (item, size))

    def _run(self) -> None:
        try:
            self._producer(self._put)
        except _Stopped:
            return
        except BaseException as e:  # handed to the consumer, raised there
            self._loop.call_soon_threadsafe(self._queue.put_nowait, (e, -1))
            return
        self._loop.call_soon_threadsafe(self._queue.put_nowait, (_END, 0))

    def _release(self) -> None:
        if self._held:
            with self._cond:
                self._items -= 1
                self._bytes -= self._held - 1
                self._cond.notify_all()
            self._held = 0

    def __aiter__(self) -> ThreadFeed[T]:
        return self

    async def __anext__(self) -> T:
        self._release()
        item, size = await self._queue.get()
        if item is _END:
            await self._task
            raise StopAsyncIteration
        if size < 0:
            await self._task
            raise cast(BaseException, item)
        self._held = size + 1
        return cast(T, item)

    async def aclose(self) -> None:
        """Stop the producer and wait for its thread to finish."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        with contextlib.suppress(Exception):
            await self._task

    async def __aenter__(self) -> ThreadFeed[T]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


# --------------------------------------------------------------------------- import items


@dataclass(frozen=True, slots=True)
class _FolderStart:
    name: str
    total: int
    uidlist: Uidlist | None


@dataclass(frozen=True, slots=True)
class _Message:
    data: bytes
    flags: int
    keywords: tuple[str, ...]
    internal_date: int | None
    uid: int | None = None
    guid: str | None = None


@dataclass(frozen=True, slots=True)
class _Note:
    problem: bool
    text: str


@dataclass(frozen=True, slots=True)
class _FolderEnd:
    pass


_Item = _FolderStart | _Message | _Note | _FolderEnd
_Put = Callable[[_Item, int], None]


class _MaildirEntry:
    """What ``Maildir.get_message`` returns with this as its factory: where the message
    is, its info suffix and mtime, but not its contents (read later, whole, as bytes:
    the stdlib's message objects would re-serialise them, not keep them byte for byte)."""

    def __init__(self, f: IO[Any]) -> None:
        self.path: str = f.name
        self.subdir = ""
        self.info = ""
        self.date = 0.0

    def set_subdir(self, subdir: str) -> None:
        self.subdir = subdir

    def set_info(self, info: str) -> None:
        self.info = info

    def set_date(self, date: float) -> None:
        self.date = date


def _is_maildir(path: Path) -> bool:
    return (path / "cur").is_dir() and (path / "new").is_dir()


def _read_optional(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _produce_maildir_folder(
    put: _Put, md: mailbox.Maildir, path: Path, name: str, *, keep_uids: bool
) -> None:
    entries: list[tuple[str, _MaildirEntry]] = []
    for key in sorted(md.iterkeys()):
        try:
            entry = cast(_MaildirEntry, md.get_message(key))
        except (OSError, KeyError) as e:
            put(_Note(True, f"{name}: message {key} not imported: {e}"), 0)
            continue
        entries.append((key, entry))
    uidlist = None
    if keep_uids:
        raw = _read_optional(path / UIDLIST_FILE)
        uidlist = parse_uidlist(raw) if raw is not None else None
        if raw is not None and uidlist is None:
            put(_Note(False, f"{name}: {UIDLIST_FILE} not understood: new UIDs"), 0)
    raw_keywords = _read_optional(path / KEYWORDS_FILE)
    keywords = parse_keywords_file(raw_keywords) if raw_keywords is not None else None

    listed: list[tuple[int, str | None, str, _MaildirEntry]] = []
    unlisted: list[tuple[float, str, _MaildirEntry]] = []
    seen_uids: set[int] = set()
    for key, entry in entries:
        rec = uidlist.records.get(key) if uidlist is not None else None
        if rec is not None and rec[0] not in seen_uids:
            seen_uids.add(rec[0])
            listed.append((rec[0], rec[1], key, entry))
        else:  # not listed, or a UID listed twice: a new UID after the listed ones
            unlisted.append((entry.date, key, entry))
    listed.sort(key=lambda r: r[0])
    unlisted.sort(key=lambda r: (r[0], r[1]))
    ordered: list[tuple[int | None, str | None, str, _MaildirEntry]] = [
        (uid, guid, key, entry) for uid, guid, key, entry in listed
    ]
    next_uid = None
    if uidlist is not None:
        next_uid = max([uidlist.uidnext, *(r[0] + 1 for r in listed)])
    for _date, key, entry in unlisted:
        ordered.append((next_uid, None, key, entry))
        if next_uid is not None:
            next_uid += 1

    put(_FolderStart(name, len(ordered), uidlist), 0)
    lost_letters = ""
    for uid, guid, key, entry in ordered:
        try:
            with open(entry.path, "rb") as f:
                data = to_crlf(f.read())
        except OSError as e:
            put(_Note(True, f"{name}: message {key} not imported: {e.strerror or e}"), 0)
            continue
        bits, kws, lost = maildir_info_flags(entry.info, keywords)
        lost_letters += lost
        put(_Message(data, bits, tuple(kws), int(entry.date), uid, guid), len(data))
    if lost_letters:
        put(
            _Note(
                False,
                f"{name}: keyword letters {''.join(sorted(set(lost_letters)))} lost "
                f"(no {KEYWORDS_FILE} file names them)",
            ),
            0,
        )
    put(_FolderEnd(), 0)


def _source_errors(produce: Callable[[_Put], None]) -> Callable[[_Put], None]:
    """Report the stdlib's own errors (``mailbox.Error``) as :class:`SourceReadError`."""

    def wrapped(put: _Put) -> None:
        try:
            produce(put)
        except mailbox.Error as e:
            raise SourceReadError(str(e) or type(e).__name__) from e

    return wrapped


def _maildir_producer(root: Path, target: str | None) -> Callable[[_Put], None]:
    @_source_errors
    def produce(put: _Put) -> None:
        factory = cast(Any, _MaildirEntry)
        md = mailbox.Maildir(root, factory=factory, create=False)
        base = target or names.INBOX
        _produce_maildir_folder(put, md, root, base, keep_uids=True)
        for folder in sorted(md.list_folders()):
            sub_path = root / ("." + folder)
            if not _is_maildir(sub_path):
                put(_Note(True, f"{sub_path}: not a Maildir folder (no cur/ and new/)"), 0)
                continue
            name = maildir_folder_to_name(folder)
            if target:
                name = f"{target}{names.SEPARATOR}{name}"
            sub = mailbox.Maildir(sub_path, factory=factory, create=False)
            _produce_maildir_folder(put, sub, sub_path, name, keep_uids=True)

    return produce


def _split_mbox_headers(data: bytes) -> tuple[list[bytes], bytes]:
    """``(header fields, rest)``: each field with its continuation lines and line ends."""
    fields: list[bytes] = []
    pos = 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        end = len(data) if end < 0 else end + 1
        line = data[pos:end]
        if line in (b"\n", b"\r\n"):
            break
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        else:
            fields.append(line)
        pos = end
    return fields, data[pos:]


def _field_name_value(field_bytes: bytes) -> tuple[bytes, str]:
    name, _, value = field_bytes.partition(b":")
    text = value.decode("latin-1").replace("\r", "").replace("\n", "")
    return name.strip().lower(), text.strip()


def _mbox_producer(path: Path, target: str | None) -> Callable[[_Put], None]:
    @_source_errors
    def produce(put: _Put) -> None:
        box = mailbox.mbox(path, create=False)
        try:
            keys = box.keys()
            name = target or names.INBOX
            put(_FolderStart(name, len(keys), None), 0)
            for key in keys:
                with box.get_file(key, from_=True) as f:
                    from_line = f.readline().decode("latin-1")
                    raw = f.read()
                fields, rest = _split_mbox_headers(raw)
                status = x_status = ""
                keywords: list[str] = []
                kept: list[bytes] = []
                date_header = None
                for fb in fields:
                    fname, value = _field_name_value(fb)
                    if fname == b"status":
                        status += value
                    elif fname == b"x-status":
                        x_status += value
                    elif fname == b"x-keywords":
                        keywords += [k for k in value.split() if k not in keywords]
                    elif fname == b"date" and date_header is None:
                        date_header = value
                    if fname not in _MBOX_META_HEADERS:
                        kept.append(fb)
                date = parse_from_line_date(from_line)
                if date is None and date_header:
                    with contextlib.suppress(TypeError, ValueError, IndexError):
                        date = int(email.utils.parsedate_to_datetime(date_header).timestamp())
                data = to_crlf(b"".join(kept) + rest)
                flags = mbox_flags(status, x_status)
                put(_Message(data, flags, tuple(keywords), date), len(data))
            put(_FolderEnd(), 0)
        finally:
            box.close()

    return produce


def check_maildir_source(path: str | os.PathLike[str]) -> None:
    """Blocking check that ``path`` is a Maildir (``cur/`` and ``new/``).

    Raises:
        SourceLayoutError: it is not, with a hint where one is nearby.
    """
    path = Path(path)
    if not path.exists():
        raise SourceLayoutError(f"{path}: no such file or directory")
    if not path.is_dir():
        raise SourceLayoutError(f"{path}: not a directory (a Maildir has cur/, new/ and tmp/)")
    if not _is_maildir(path):
        hint = ""
        for child in ("Maildir", "mail"):
            if _is_maildir(path / child):
                hint = f"; did you mean {path / child}?"
                break
        raise SourceLayoutError(f"{path}: not a Maildir (no cur/ and new/ directories){hint}")


def check_mbox_source(path: str | os.PathLike[str]) -> None:
    """Blocking check that ``path`` is an mbox file (empty, or starting ``From``).

    Raises:
        SourceLayoutError: it is not.
    """
    path = Path(path)
    if not path.exists():
        raise SourceLayoutError(f"{path}: no such file or directory")
    if path.is_dir():
        raise SourceLayoutError(f"{path}: is a directory; give one mbox file")
    with open(path, "rb") as f:
        head = f.read(5)
    if head and head != b"From ":
        raise SourceLayoutError(f"{path}: not an mbox file (it does not start with 'From ')")


# --------------------------------------------------------------------------- import (loop side)


class _FeedImport:
    """Consume a producer's items on the loop: one target mailbox per folder."""

    def __init__(
        self, user: User, report: ImportReport, *, batch: int, progress: ProgressFactory
    ) -> None:
        self.user = user
        self.report = report
        self.batch = batch
        self.progress = progress

    async def run(self, producer: Callable[[_Put], None]) -> None:
        feed: ThreadFeed[_Item] = ThreadFeed(producer)
        async with feed:
            current: _Folder | None = None
            try:
                async for item in feed:
                    if isinstance(item, _Note):
                        (self.report.problems if item.problem else self.report.warnings).append(
                            item.text
                        )
                    elif isinstance(item, _FolderStart):
                        current = await _Folder.start(self, item)
                    elif isinstance(item, _Message):
                        if current is not None:
                            await current.add(item)
                    elif current is not None:
                        await current.finish()
                        current = None
            finally:
                if current is not None:
                    await current.abort()


@dataclass
class _Folder:
    owner: _FeedImport
    uidlist: Uidlist | None
    result: MailboxResult
    mbox: Mailbox | None
    saver: BatchSaver | None
    progress: ProgressSink
    uidnext: int = 0
    skip_below: int = 0
    failed: list[str] = field(default_factory=list)

    @classmethod
    async def start(cls, owner: _FeedImport, item: _FolderStart) -> _Folder:
        user, report = owner.user, owner.report
        uidlist = item.uidlist
        try:
            name = names.normalize(item.name)
        except InvalidMailboxName as e:
            report.problems.append(f"{item.name!r}: not imported: {e}")
            skipped = MailboxResult(item.name, "skipped")
            return cls(owner, None, skipped, None, None, no_progress("", 0))
        try:
            prepared = await prepare_mailbox(
                user,
                name,
                guid=uidlist.guid if uidlist else None,
                uidvalidity=uidlist.uidvalidity if uidlist else None,
                keep_uids=uidlist is not None,
            )
        except ImportConflict:
            # Maildir import appends: the folder's own UIDs only fit an empty mailbox.
            prepared = await prepare_mailbox(
                user, name, guid=None, uidvalidity=None, keep_uids=False
            )
            report.warnings.append(f"{name}: holds other mail: messages get new UIDs")
            uidlist = None
        result = MailboxResult(name, prepared.mode, uidvalidity=prepared.info.uidvalidity)
        report.mailboxes.append(result)
        mbox = await user.open_mailbox(name)
        progress = owner.progress(name, item.total)
        saver = BatchSaver(mbox, batch=owner.batch, progress=progress)
        folder = cls(owner, uidlist, result, mbox, saver, progress)
        if uidlist is not None:
            folder.uidnext = uidlist.uidnext
            folder.skip_below = prepared.info.uidnext
        return folder

    async def add(self, msg: _Message) -> None:
        if self.saver is None:
            return
        uid = msg.uid if self.uidlist is not None else None
        if uid is not None and uid < self.skip_below:
            self.result.skipped += 1
            self.progress.step()
            return
        await self.saver.add(
            Incoming(
                msg.data,
                flags=msg.flags,
                keywords=msg.keywords,
                internal_date=msg.internal_date,
                guid=msg.guid if uid is not None else None,
                uid=uid,
                size_hint=len(msg.data),
            )
        )

    async def finish(self) -> None:
        try:
            if self.saver is not None:
                await self.saver.flush()
                self.result.imported = self.saver.saved
            if self.mbox is not None and self.uidnext:
                await self.owner.user.raise_counters(self.result.name, uidnext=self.uidnext)
        finally:
            await self._close()

    async def abort(self) -> None:
        try:
            if self.saver is not None:
                await self.saver.rollback()
                self.result.imported = self.saver.saved
        finally:
            await self._close()

    async def _close(self) -> None:
        self.progress.close()
        if self.mbox is not None:
            mbox, self.mbox = self.mbox, None
            await mbox.close()


async def import_maildir(
    storage: Storage,
    user_name: str,
    path: str | os.PathLike[str],
    *,
    mailbox_name: str | None = None,
    batch: int = DEFAULT_BATCH,
    progress: ProgressFactory = no_progress,
) -> ImportReport:
    """Import a Maildir or Maildir++ tree (see the module docstring).

    Args:
        storage: The aiodbox storage.
        user_name: The aiodbox user (created with the default mailboxes if new).
        path: The Maildir (its ``cur/`` and ``new/`` directories) or Maildir++ root.
        mailbox_name: Where the root goes (default INBOX); subfolders go below it.
        batch: Messages per transaction.
        progress: Progress display factory, called once per mailbox.

    Raises:
        SourceLayoutError: ``path`` is not a Maildir (nothing written).
        StorageError, FsError: the aiodbox storage failed (committed batches stay).
        OSError: reading the source failed in a way that stops the import.
    """
    root = Path(path)
    await asyncio.to_thread(check_maildir_source, root)
    report = ImportReport(f"{root} (Maildir)")
    user = await storage.user(user_name)
    await _FeedImport(user, report, batch=batch, progress=progress).run(
        _maildir_producer(root, _target_name(mailbox_name))
    )
    subs = await asyncio.to_thread(_read_optional, root / SUBSCRIPTIONS_FILE)
    if subs is not None:
        target = _target_name(mailbox_name)
        for sub in parse_subscriptions(subs):
            name = names.SEPARATOR.join(_decode(level) for level in sub.split(names.SEPARATOR))
            if target is not None:
                upper = name.upper()
                name = target if upper == names.INBOX else f"{target}{names.SEPARATOR}{name}"
            try:
                await user.subscribe(name)
            except InvalidMailboxName as e:
                report.problems.append(f"subscription {sub!r} not kept: {e}")
                continue
            report.subscribed += 1
    return report


def _decode(level: str) -> str:
    try:
        return decode_mutf7(level)
    except ValueError:
        return level


def _target_name(name: str | None) -> str | None:
    return names.normalize(name) if name else None


async def import_mbox(
    storage: Storage,
    user_name: str,
    path: str | os.PathLike[str],
    *,
    mailbox_name: str | None = None,
    batch: int = DEFAULT_BATCH,
    progress: ProgressFactory = no_progress,
) -> ImportReport:
    """Import one mbox file into INBOX or ``mailbox_name`` (see the module docstring).

    Raises:
        SourceLayoutError: ``path`` is not an mbox file (nothing written).
        StorageError, FsError: the aiodbox storage failed (committed batches stay).
        OSError: reading the source failed.
    """
    source = Path(path)
    await asyncio.to_thread(check_mbox_source, source)
    report = ImportReport(f"{source} (mbox)")
    user = await storage.user(user_name)
    await _FeedImport(user, report, batch=batch, progress=progress).run(
        _mbox_producer(source, _target_name(mailbox_name))
    )
    return report
