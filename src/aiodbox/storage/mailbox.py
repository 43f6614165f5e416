"""``Mailbox``, ``Mail`` records and ``Transaction``: lib-storage for aiodbox.

Theory of operation
-------------------
A :class:`Mailbox` is one process's handle on a mailbox: the shared
:class:`~aiodbox.storage.view.MailboxView`, plus the operations.  ``sync()`` brings the
view up to date cheaply: it asks SQLite whether anything committed since the last look
(``PRAGMA data_version``) and only then reads the rows changed since the view's modseq.

A :class:`Transaction` collects saves (streamed into dbox files as they arrive), flag
changes and copies; ``commit()`` makes them visible together, in the durability order of
DESIGN.md §6:

1. finish writing every saved message (still invisible: temp files / uncommitted appends);
2. reserve UIDs in a short index transaction that also records a ``pending`` row;
3. commit the message data under its final name (fsync per policy);
4. one index transaction inserts the rows, applies flag changes and copies, bumps the
   modseq and deletes the ``pending`` row.  It waits until every lower UID reserved in
   the same mailbox (by this process or another live one) is visible or given up, so
   messages appear in UID order (see :mod:`.uid_order`).

A crash after 2 or 3 leaves message files that no row points at; ``pending`` says which,
and the next sync (or fsck) adopts them.  A crash never leaves a row pointing at missing
data, and the caller gets its result only after step 4.

*Staged saves* skip step 2 (see :meth:`Transaction._commit_staged`): where the format can
make every save's data durable before its UID is known (sdbox messages built in memory,
on a local disk: whole files under temp names; mdbox: records committed to their still
locked files) and nothing is copied, one index job takes the UIDs, names the sdbox files
(the directory fsynced before its ``COMMIT``), and inserts the rows.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import logging
import os
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    Awaitable,
    Callable,
    Iterable,
    Sequence,
)
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from aiodbox.fs import FsNotFound
from aiodbox.fs.paths import pid_alive
from aiodbox.index.db import read_data_version
from aiodbox.index.schema import FLAG_BITS
from aiodbox.random_ids import new_uuid4_hex
from aiodbox.storage.errors import MailboxNotFound, MessageNotFound, StorageError
from aiodbox.storage.formats import Location, SaveContext, SaveHandle, StagedSave
from aiodbox.storage.view import MailboxView, ViewColumns, build_columns

if TYPE_CHECKING:
    import sqlite3

    from aiodbox.dbox.file import BodyStream, DboxMessage
    from aiodbox.storage.fetch import FetchedMessage, FetchParts
    from aiodbox.storage.search import Criterion
    from aiodbox.storage.storage import MailboxInfo, User

log = logging.getLogger("aiodbox.storage")
_T = TypeVar("_T")

ALL_FLAGS = sum(FLAG_BITS.values())
DELETED = FLAG_BITS["\\Deleted"]
SEEN = FLAG_BITS["\\Seen"]

MESSAGE_COLUMNS = (
    "m.uid, m.guid, m.flags, m.keywords, m.modseq, m.internal_date, m.internal_tz,"
    " m.save_date, m.size, m.file_name, m.map_uid, m.cache, map.file_id, map.offset, map.size"
)


def flags_to_bits(flags: Iterable[str]) -> int:
    """System flag names → bit mask (unknown names ignored; case-insensitive)."""
    bits = 0
    lower = {k.lower(): v for k, v in FLAG_BITS.items()}
    for f in flags:
        bits |= lower.get(f.lower(), 0)
    return bits


def bits_to_flags(bits: int) -> list[str]:
    """Bit mask → system flag names in a stable order."""
    return [name for name, bit in FLAG_BITS.items() if bits & bit]


class MailRecord(NamedTuple):
    """Everything the index knows about one message: a row of ``MESSAGE_COLUMNS``.

    A tuple, so that :meth:`from_row` is one C call (FETCH reads a record per message;
    a dataclass filled field by field cost three times what SQLite does to make the
    row)."""

    uid: int
    guid: str
    flags: int
    keyword_text: str | None
    """The keywords as stored (space-separated); see :attr:`keywords`."""
    modseq: int
    internal_date: int
    internal_tz: int
    save_date: int
    size: int
    file_name: str | None
    map_uid: int | None
    cache: bytes | None
    file_id: int | None
    offset: int | None
    record_size: int | None

    @property
    def keywords(self) -> tuple[str, ...]:
        """The message's keywords, in the order they were set."""
        text = self.keyword_text
        return tuple(text.split()) if text else ()

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> MailRecord:
        """From a row of ``MESSAGE_COLUMNS``."""
        return _new_tuple(cls, row)


_new_tuple = tuple.__new__


@dataclass(frozen=True, slots=True)
class CommitResult:
    """What a transaction did.

    Attributes:
        saved_uids: UIDs of the saved messages, in save order.
        copied: ``(source uid, new uid)`` per copied message.
        dest_uidvalidity: UIDVALIDITY of the copy destination (COPYUID), or None.
        modified: UIDs whose flags were not changed because of ``unchanged_since``.
        modseq: the modseq the transaction's changes got (0 if it changed nothing here).
    """

    saved_uids: list[int]
    copied: list[tuple[int, int]]
    dest_uidvalidity: int | None
    modified: list[int]
    modseq: int


@dataclass
class _FlagChange:
    uids: list[int]
    mode: str  # "add", "remove", "replace"
    flags: int
    keywords: tuple[str, ...]
    unchanged_since: int | None


@dataclass
class _PendingSave:
    handle: SaveHandle
    flags: int
    keywords: tuple[str, ...]
    internal_date: int
    internal_tz: int
    guid: str
    uid: int | None = None


@dataclass
class _Copy:
    records: list[MailRecord]
    dest: Mailbox


@dataclass
class Transaction:
    """Saves, copies and flag changes that become visible together at :meth:`commit`."""

    mailbox: Mailbox
    _saves: list[_PendingSave] = field(default_factory=list)
    _flags: list[_FlagChange] = field(default_factory=list)
    _copies: list[_Copy] = field(default_factory=list)
    _done: bool = False
    _ctx: SaveContext = field(default_factory=SaveContext)

    async def save(
        self,
        source: AsyncIterable[bytes] | bytes,
        *,
        flags: int = 0,
        keywords: Iterable[str] = (),
        internal_date: int | None = None,
        internal_tz: int = 0,
        size_hint: int | None = None,
        guid: str | None = None,
        uid: int | None = None,
    ) -> int:
        """Stream one message into the store (invisible until :meth:`commit`).

        Args:
            source: the message bytes (CRLF line ends), whole or as async chunks; they are
                written as they arrive, never held whole (sdbox writes a message whose
                ``size_hint`` is at most 64 KiB in one piece at the commit).
            flags: system flag bits.  keywords: keyword names.
            internal_date: UNIX time (default: now); internal_tz: its offset in minutes.
            size_hint: the size if known (IMAP APPEND knows it): mdbox picks a file by it.
            guid: keep this message GUID (imports); default: a new one.
            uid: keep this UID (imports).  Either every save of a transaction gives one
                or none does; they must ascend and be >= the mailbox's UIDNEXT.

        Returns:
            The index of this save among the transaction's saves.
        """
        self._check_open()
        date = int(time.time()) if internal_date is None else internal_date
        message_guid = guid or new_uuid4_hex()
        if size_hint is None and isinstance(source, (bytes, bytearray, memoryview)):
            size_hint = len(source)
        try:
            handle = await self.mailbox.user.format.begin_save(
                self.mailbox.info, message_guid, date, size_hint, self._ctx
            )
        except BaseException:
            await self.rollback()
            raise
        try:
            if isinstance(source, (bytes, bytearray, memoryview)):
                await handle.write(bytes(source))
            else:
                async for chunk in source:
                    await handle.write(chunk)
            await handle.finish_data()
        except BaseException:
            # A half-written record must not reach a commit: the whole transaction goes
            # (IMAP MULTIAPPEND is all or nothing anyway).
            await handle.abort()
            await self.rollback()
            raise
        kws = _unique(keywords)
        self._saves.append(
            _PendingSave(handle, flags & ALL_FLAGS, kws, date, internal_tz, message_guid, uid)
        )
        return len(self._saves) - 1

    def update_flags(
        self,
        uids: Iterable[int],
        mode: str,
        flags: int = 0,
        keywords: Iterable[str] = (),
        *,
        unchanged_since: int | None = None,
    ) -> None:
        """Add, remove or replace flags and keywords of ``uids`` at commit.

        ``unchanged_since`` (CONDSTORE): messages whose modseq is higher are left alone and
        reported in :attr:`CommitResult.modified`.
        """
        self._check_open()
        if mode not in ("add", "remove", "replace"):
            raise ValueError(f"bad flag mode {mode!r}")
        self._flags.append(
            _FlagChange(list(uids), mode, flags & ALL_FLAGS, _unique(keywords), unchanged_since)
        )

    async def copy(self, uids: Iterable[int], dest: Mailbox) -> None:
        """Copy messages to ``dest`` at commit (new UIDs there; flags kept)."""
        self._check_open()
        records = await self.mailbox.records(list(uids))
        self._copies.append(_Copy(records, dest))

    def _check_open(self) -> None:
        if self._done:
            raise StorageError("the transaction was already committed or rolled back")

    async def rollback(self) -> None:
        """Discard everything; nothing becomes visible."""
        self._done = True
        for s in self._saves:
            await s.handle.abort()
        self._saves.clear()

    async def commit(self) -> CommitResult:
        """Make every save, copy and flag change visible (see the module docstring).

        Raises:
            StorageError: nothing became visible (the saved data is discarded).
        """
        self._check_open()
        self._done = True
        mbox = self.mailbox
        user = mbox.user
        fmt = user.format
        try:
            return await self._commit(mbox, user, fmt)
        finally:
            for s in self._saves:
                await s.handle.abort()  # no-op for committed handles

    async def _commit(self, mbox: Mailbox, user: User, fmt: Any) -> CommitResult:
        n_saves = len(self._saves)
        copies_by_dest: dict[int, list[_Copy]] = {}
        for c in self._copies:
            copies_by_dest.setdefault(c.dest.info.id, []).append(c)
        if len(copies_by_dest) > 1:
            raise StorageError("one transaction copies to one mailbox")
        dest: Mailbox | None = self._copies[0].dest if self._copies else None
        copy_records = [r for c in self._copies for r in c.records]
        pid = os.getpid()
        now = time.time()
        live_rows = user.uid_order.live_rows

        # 2. reserve UIDs (and record what is pending, for crash recovery)
        explicit = [s.uid for s in self._saves if s.uid is not None]
        if explicit and (
            len(explicit) != n_saves or any(a >= b for a, b in itertools.pairwise(explicit))
        ):
            raise StorageError("explicit UIDs must be given for every save, ascending")

        if n_saves and not explicit and not copy_records:
            staged = await fmt.stage_saves(mbox.info, [s.handle for s in self._saves])
            if staged is not None:
                return await self._commit_staged(mbox, user, fmt, staged)

        def reserve(conn: sqlite3.Connection) -> tuple[int, int, list[int]]:
            first = dest_first = 0
            pending: list[int] = []
            if n_saves:
                if explicit:
                    first = _claim_uids(conn, mbox.info.id, explicit[0], explicit[-1])
                    span = explicit[-1] - explicit[0] + 1
                else:
                    first = _bump_uidnext(conn, mbox.info.id, n_saves)
                    span = n_saves
                cur = conn.execute(
                    "INSERT INTO pending (mailbox_id, uid, count, pid, started)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (mbox.info.id, first, span, pid, now),
                )
                assert cur.lastrowid is not None
                pending.append(cur.lastrowid)
                live_rows.add(cur.lastrowid)  # (before a staged save's job can look)
                uids = explicit or list(range(first, first + n_saves))
                for s, uid in zip(self._saves, uids, strict=True):
                    where = fmt.pending_location(s.handle)
                    if where is not None:  # mdbox: which record a crash would orphan
                        cur = conn.execute(
                            "INSERT INTO pending (mailbox_id, uid, count, file_id, offset, size,"
                            " pid, started) VALUES (?, ?, 1, ?, ?, ?, ?, ?)",
                            (mbox.info.id, uid, *where, pid, now),
                        )
                        assert cur.lastrowid is not None
                        pending.append(cur.lastrowid)
            if copy_records and dest is not None:
                dest_first = _bump_uidnext(conn, dest.info.id, len(copy_records))
                cur = conn.execute(
                    "INSERT INTO pending (mailbox_id, uid, count, pid, started)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (dest.info.id, dest_first, len(copy_records), pid, now),
                )
                assert cur.lastrowid is not None
                pending.append(cur.lastrowid)
                live_rows.add(cur.lastrowid)
            return first, dest_first, pending

        need_reserve = n_saves or copy_records
        first, dest_first, pending_ids = (
            await user.db.write(reserve) if need_reserve else (0, 0, [])
        )
        turns: list[tuple[int, int]] = []  # (mailbox id, first UID) reserved above
        if n_saves:
            turns.append((mbox.info.id, first))
        if copy_records and dest is not None:
            turns.append((dest.info.id, dest_first))
        with user.uid_order.reserved(turns, pending_ids):
            # 3. message data under final names, durable
            saved_uids = explicit or list(range(first, first + n_saves))
            handles = [s.handle for s in self._saves]
            locations = await fmt.commit_saves(mbox.info, handles, saved_uids)
            copy_uids = list(range(dest_first, dest_first + len(copy_records)))
            try:
                modseq, modified = await self._index_saves(
                    mbox, user, fmt, turns, pending_ids, saved_uids, locations, dest, copy_records,
                    copy_uids,
                )  # fmt: skip
            finally:
                await fmt.saves_indexed(handles)
        # (the turns end here: later UIDs may become visible while views refresh)
        for s in self._saves:
            s.handle.committed = True
        await mbox.refresh()
        if dest is not None and dest is not mbox:
            await dest.refresh()
        return CommitResult(
            saved_uids,
            list(zip([r.uid for r in copy_records], copy_uids, strict=True)),
            dest.info.uidvalidity if dest is not None else None,
            modified,
            modseq,
        )

    async def _index_saves(
        self,
        mbox: Mailbox,
        user: User,
        fmt: Any,
        turns: list[tuple[int, int]],
        pending_ids: list[int],
        saved_uids: list[int],
        locations: list[Location],
        dest: Mailbox | None,
        copy_records: list[MailRecord],
        copy_uids: list[int],
    ) -> tuple[int, list[int]]:
        """Steps 3 (copies' files) and 4 of :meth:`commit`; see the module docstring."""
        live_rows = user.uid_order.live_rows
        copy_locations: list[Any] = []
        if copy_records and dest is not None:
            copy_locations = await fmt.copy_files(mbox.info, dest.info, copy_records, copy_uids)

        # 4. the index transaction
        saves = self._saves
        flag_changes = self._flags
        save_date = int(time.time())

        own_rows = frozenset(pending_ids)

        def apply(conn: sqlite3.Connection, wait_for_others: bool) -> tuple[int, list[int]]:
            if wait_for_others and _lower_reservations_pending(conn, turns, own_rows, live_rows):
                raise _LowerUidsPending
            modseq = 0
            modified: list[int] = []
            if saves or flag_changes:
                modseq = _bump_modseq(conn, mbox.info.id)
            _insert_saves(conn, fmt, mbox.info.id, saves, saved_uids, locations, modseq, save_date)
            for change in flag_changes:
                modified += _apply_flags(conn, mbox.info.id, change, modseq)
            if copy_records and dest is not None:
                dmodseq = _bump_modseq(conn, dest.info.id)
                for rec, uid, loc in zip(copy_records, copy_uids, copy_locations, strict=True):
                    file_name, map_uid = fmt.copy_location_in_tx(conn, rec, loc)
                    conn.execute(
                        "INSERT INTO messages (mailbox_id, uid, guid, flags, keywords, modseq,"
                        " internal_date, internal_tz, save_date, size, file_name, map_uid,"
                        " cache) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            dest.info.id,
                            uid,
                            rec.guid,
                            rec.flags,
                            " ".join(rec.keywords),
                            dmodseq,
                            rec.internal_date,
                            rec.internal_tz,
                            save_date,
                            rec.size,
                            file_name,
                            map_uid,
                            rec.cache,
                        ),
                    )
                    _add_mailbox_keywords(conn, dest.info.id, rec.keywords)
            for pid_row in pending_ids:
                conn.execute("DELETE FROM pending WHERE id = ?", (pid_row,))
            return modseq, modified

        try:
            await user.uid_order.wait_turns(turns)  # this process's lower UIDs first
        except BaseException:
            await fmt.discard_committed(mbox.info, locations)
            raise

        async def discard() -> None:
            await fmt.discard_committed(mbox.info, locations)

        return await _index_step(user, apply, turns, discard)

    async def _commit_staged(
        self, mbox: Mailbox, user: User, fmt: Any, staged: list[StagedSave]
    ) -> CommitResult:
        """Steps 2 to 4 in one index job, for saves whose data the format staged
        (:meth:`MailFormat.stage_saves`): the job takes the next UIDs, names sdbox files
        after them (their directory fsynced before the ``COMMIT``, once per group of
        jobs), and inserts the rows.  No ``pending`` row and no reservation round trip.
        UID order holds because the UIDs are taken inside the transaction that makes
        them visible, and only when no lower reservation is still being saved.

        A crash between naming and ``COMMIT`` leaves an sdbox file above the index's
        UIDNEXT that no row points at: the next staged save finds the name taken and
        uses the next UID (logged), and fsck adopts the file (an mdbox record, likewise).
        """
        saves = self._saves
        flag_changes = self._flags
        mailbox_id = mbox.info.id
        live_rows = user.uid_order.live_rows
        save_date = int(time.time())

        def apply(conn: sqlite3.Connection, wait_for_others: bool) -> _StagedOutcome:
            # One statement takes the UIDs and the modseq (each statement costs the
            # writer thread a round trip through the interpreter lock); should the job
            # not go ahead, its savepoint or the group's rollback undoes it.
            uid, modseq, lower = _take_uids_and_modseq(conn, mailbox_id, len(staged))
            reserved_end = uid + len(staged)
            if (
                wait_for_others
                and lower
                and _lower_reservations_pending(conn, [(mailbox_id, uid)], frozenset(), live_rows)
            ):
                raise _LowerUidsPending
            uids: list[int] = []
            locations: list[Location] = []
            try:
                for st in staged:
                    while True:
                        try:
                            locations.append(fmt.name_staged_in_tx(st, uid))
                            break
                        except FileExistsError:
                            log.warning(
                                "%s uid %d: its file exists without an index row (a crash?);"
                                " saved as uid %d, fsck adopts the file",
                                mbox.info.name,
                                uid,
                                uid + 1,
                            )
                            uid += 1
                    uids.append(uid)
                    uid += 1
                if uid != reserved_end:  # (names left by a crash were skipped)
                    conn.execute("UPDATE mailboxes SET uidnext = ? WHERE id = ?", (uid, mailbox_id))
                _insert_saves(conn, fmt, mailbox_id, saves, uids, locations, modseq, save_date)
                modified = [
                    m
                    for change in flag_changes
                    for m in _apply_flags(conn, mailbox_id, change, modseq)
                ]
            except BaseException:
                _unname_all(fmt, staged)
                raise
            return uids, modseq, modified

        async def take_names_back() -> None:
            # The job named files, but its group was not committed.
            named = [st.file.name for st in staged if st.file is not None and st.file.name]
            if named:
                await fmt.discard_committed(mbox.info, [Location(0, file_name=n) for n in named])

        try:
            saved_uids, modseq, modified = await _index_step(user, apply, [], take_names_back)
        finally:
            for st in staged:
                if st.file is not None:
                    await st.file.discard()  # (a no-op for a named file)
            await fmt.saves_indexed([s.handle for s in saves])
        for s in saves:
            s.handle.committed = True
        await mbox.refresh()
        return CommitResult(saved_uids, [], None, modified, modseq)


_StagedOutcome = tuple[list[int], int, list[int]]


async def _index_step(
    user: User,
    apply: Callable[[sqlite3.Connection, bool], _T],
    turns: list[tuple[int, int]],
    undo: Callable[[], Awaitable[None]],
) -> _T:
    """Run ``apply`` as a commit's index step (:func:`_write_in_turn`); if it fails,
    ``undo`` what the commit wrote before it.

    A caller cancelled meanwhile (a client gone mid-APPEND) waits until the job ended:
    the job may still commit rows that point at the data, so only its real outcome may
    decide whether to undo (or to release what it holds); the cancellation is re-raised
    after."""
    write = asyncio.ensure_future(_write_in_turn(user, apply, turns))
    try:
        return await asyncio.shield(write)
    except asyncio.CancelledError:
        await asyncio.wait([write])
        if write.cancelled() or write.exception() is not None:
            await undo()
        raise
    except BaseException:
        await undo()
        raise


def _unname_all(fmt: Any, staged: list[StagedSave]) -> None:
    """In the index job that failed: take back the names it gave (logged if impossible:
    fsck adopts such a file)."""
    for st in staged:
        try:
            fmt.unname_staged_in_tx(st)
        except OSError as e:
            log.error("cannot take back %s after a failed save: %s", st.file and st.file.name, e)


def _insert_saves(
    conn: sqlite3.Connection,
    fmt: Any,
    mailbox_id: int,
    saves: list[_PendingSave],
    uids: list[int],
    locations: list[Location],
    modseq: int,
    save_date: int,
) -> None:
    for s, uid, loc in zip(saves, uids, locations, strict=True):
        file_name, map_uid = fmt.location_in_tx(conn, loc)
        conn.execute(
            "INSERT INTO messages (mailbox_id, uid, guid, flags, keywords, modseq,"
            " internal_date, internal_tz, save_date, size, file_name, map_uid)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                mailbox_id,
                uid,
                s.guid,
                s.flags,
                " ".join(s.keywords),
                modseq,
                s.internal_date,
                s.internal_tz,
                save_date,
                loc.imap_size,
                file_name,
                map_uid,
            ),
        )
        _add_mailbox_keywords(conn, mailbox_id, s.keywords)


OTHER_PROCESS_WAIT_LIMIT = 5.0
"""Seconds a commit waits for another process's lower UIDs before it goes ahead anyway
(that process is stuck: better a message out of order than none)."""
RETRY_FIRST_PAUSE = 0.002
RETRY_MAX_PAUSE = 0.05
"""Seconds between tries while lower UIDs are pending, where no index write woke it."""
PENDING_STALE_AFTER = 60.0
"""A ``pending`` reservation older than this is a leftover, not a save in progress."""


class _LowerUidsPending(Exception):
    """A live process holds lower UIDs of the mailbox: try the index step again soon."""


def _lower_reservations_pending(
    conn: sqlite3.Connection,
    turns: list[tuple[int, int]],
    own_rows: frozenset[int],
    live_rows: set[int],
) -> bool:
    """Whether UIDs below ``turns`` are reserved and still being saved: by a live other
    process, or by another transaction of this process (its rows are in ``live_rows``)."""
    own = os.getpid()
    since = time.time() - PENDING_STALE_AFTER
    alive: dict[int, bool] = {}
    for mailbox_id, first_uid in turns:
        for row_id, pid in conn.execute(
            "SELECT id, pid FROM pending WHERE mailbox_id = ? AND uid < ? AND started > ?",
            (mailbox_id, first_uid, since),
        ):
            if row_id in own_rows:
                continue
            if pid == own:
                if row_id in live_rows:
                    return True
            elif alive.setdefault(pid, pid_alive(pid)):
                return True
    return False


async def _write_in_turn(
    user: User,
    apply: Callable[[sqlite3.Connection, bool], _T],
    turns: list[tuple[int, int]],
) -> _T:
    """Queue ``apply`` as an index write (letting this process's later transactions queue
    theirs behind it); it goes ahead once no lower UIDs are still being saved.  Until
    then it is retried whenever some process wrote to the index (the lower save's commit
    is such a write), at the latest after a pause that grows from
    :data:`RETRY_FIRST_PAUSE` to :data:`RETRY_MAX_PAUSE`, for at most
    :data:`OTHER_PROCESS_WAIT_LIMIT` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + OTHER_PROCESS_WAIT_LIMIT
    pause = RETRY_FIRST_PAUSE
    while True:
        wait = loop.time() < deadline
        seen = user.db.change_generation

        def attempt(conn: sqlite3.Connection, wait: bool = wait) -> _T:
            return apply(conn, wait)

        try:
            # The transactions this wakes run only after the await below queued this job.
            user.uid_order.queued(turns)
            return await user.db.write(attempt)
        except _LowerUidsPending:
            await user.db.wait_for_write(seen, pause)
            pause = min(pause * 2, RETRY_MAX_PAUSE)


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for k in items:
        if k.lower() not in {s.lower() for s in seen}:
            seen[k] = None
    return tuple(seen)


def _take_uids_and_modseq(
    conn: sqlite3.Connection, mailbox_id: int, n: int
) -> tuple[int, int, bool]:
    """Take ``n`` UIDs and the next modseq; return (first UID, modseq, whether recent
    ``pending`` rows lie below the first UID: only then need they be looked at)."""
    row = conn.execute(
        "UPDATE mailboxes SET uidnext = uidnext + ?1, highestmodseq = highestmodseq + 1"
        " WHERE id = ?2 RETURNING uidnext, highestmodseq, EXISTS(SELECT 1 FROM pending p"
        " WHERE p.mailbox_id = ?2 AND p.uid < mailboxes.uidnext - ?1 AND p.started > ?3)",
        (n, mailbox_id, time.time() - PENDING_STALE_AFTER),
    ).fetchone()
    if row is None:
        raise MailboxNotFound("the mailbox was deleted")
    return int(row[0]) - n, int(row[1]), bool(row[2])


def _bump_uidnext(conn: sqlite3.Connection, mailbox_id: int, n: int) -> int:
    row = conn.execute(
        "UPDATE mailboxes SET uidnext = uidnext + ? WHERE id = ? RETURNING uidnext", (n, mailbox_id)
    ).fetchone()
    if row is None:
        raise MailboxNotFound("the mailbox was deleted")
    return int(row[0]) - n


def _claim_uids(conn: sqlite3.Connection, mailbox_id: int, first: int, last: int) -> int:
    row = conn.execute("SELECT uidnext FROM mailboxes WHERE id = ?", (mailbox_id,)).fetchone()
    if row is None:
        raise MailboxNotFound("the mailbox was deleted")
    if first < row[0]:
        raise StorageError(f"UID {first} is below UIDNEXT {row[0]}: it may have been used")
    conn.execute("UPDATE mailboxes SET uidnext = ? WHERE id = ?", (last + 1, mailbox_id))
    return first


def _bump_modseq(conn: sqlite3.Connection, mailbox_id: int) -> int:
    row = conn.execute(
        "UPDATE mailboxes SET highestmodseq = highestmodseq + 1 WHERE id = ?"
        " RETURNING highestmodseq",
        (mailbox_id,),
    ).fetchone()
    if row is None:
        raise MailboxNotFound("the mailbox was deleted")
    return int(row[0])


def _add_mailbox_keywords(conn: sqlite3.Connection, mailbox_id: int, kws: Iterable[str]) -> None:
    kws = list(kws)
    if not kws:
        return
    row = conn.execute("SELECT keywords FROM mailboxes WHERE id = ?", (mailbox_id,)).fetchone()
    have = row[0].split() if row and row[0] else []
    lower = {k.lower() for k in have}
    added = [k for k in kws if k.lower() not in lower]
    if added:
        conn.execute(
            "UPDATE mailboxes SET keywords = ? WHERE id = ?", (" ".join(have + added), mailbox_id)
        )


def _apply_flags(
    conn: sqlite3.Connection, mailbox_id: int, change: _FlagChange, modseq: int
) -> list[int]:
    modified: list[int] = []
    if change.keywords:
        _add_mailbox_keywords(conn, mailbox_id, change.keywords)
    for chunk_start in range(0, len(change.uids), 500):
        chunk = change.uids[chunk_start : chunk_start + 500]
        marks = ",".join("?" * len(chunk))
        rows = conn.execute(
            f"SELECT uid, flags, keywords, modseq FROM messages WHERE mailbox_id = ?"
            f" AND uid IN ({marks})",
            (mailbox_id, *chunk),
        ).fetchall()
        for uid, flags, kw_text, old_modseq in rows:
            if change.unchanged_since is not None and old_modseq > change.unchanged_since:
                modified.append(uid)
                continue
            kws = kw_text.split() if kw_text else []
            if change.mode == "add":
                new_flags = flags | change.flags
                lower = {k.lower() for k in kws}
                new_kws = kws + [k for k in change.keywords if k.lower() not in lower]
            elif change.mode == "remove":
                new_flags = flags & ~change.flags
                drop = {k.lower() for k in change.keywords}
                new_kws = [k for k in kws if k.lower() not in drop]
            else:
                new_flags = change.flags
                new_kws = list(change.keywords)
            if new_flags != flags or new_kws != kws:
                conn.execute(
                    "UPDATE messages SET flags = ?, keywords = ?, modseq = ?"
                    " WHERE mailbox_id = ? AND uid = ?",
                    (new_flags, " ".join(new_kws), modseq, mailbox_id, uid),
                )
    return modified


class Mailbox:
    """A mailbox opened by this process (shared by its sessions); see the module docstring."""

    def __init__(self, user: User, info: MailboxInfo) -> None:
        self.user = user
        self.info = info
        self.view = MailboxView(info.id, info.uidvalidity)
        self.refs = 0
        self.deleted = False
        self.loaded = False  # the view holds the mailbox (see User.open_mailbox)
        self._refresh_lock = asyncio.Lock()

    @property
    def name(self) -> str:
        return self.info.name

    async def load(self) -> None:
        """Read the whole mailbox into the view (open)."""
        mid = self.info.id

        def q(conn: sqlite3.Connection) -> tuple[ViewColumns, Any, int]:
            version = read_data_version(conn)
            conn.execute("BEGIN")
            try:
                mb = conn.execute(
                    "SELECT highestmodseq, uidnext, keywords, first_recent_uid FROM mailboxes"
                    " WHERE id = ?",
                    (mid,),
                ).fetchone()
                rows = conn.execute(
                    "SELECT uid, flags, keywords, modseq, size, internal_date FROM messages"
                    " WHERE mailbox_id = ? ORDER BY uid",
                    (mid,),
                ).fetchall()
            finally:
                conn.execute("COMMIT")
            return build_columns(rows), mb, version  # built here, off the event loop

        columns, mb, version = await self.user.db.read(q)
        if mb is None:
            raise MailboxNotFound(f"mailbox {self.info.name!r} was deleted")
        self.view.install(columns, mb[0], mb[1], mb[2])
        self.view.first_recent_uid = mb[3]
        self.view.data_version = version
        self.loaded = True

    async def sync(self) -> bool:
        """Catch up with changes committed by anyone (free when nothing changed: the
        index directory is watched, so no SQLite call is needed to know that).

        Returns:
            True if the view changed.
        """
        if self.deleted:
            raise MailboxNotFound(f"mailbox {self.info.name!r} was deleted")
        db = self.user.db
        generation = db.change_generation
        if generation is not None and generation == self.view.change_generation:
            return False  # no process wrote to the index since the last look
        version = await db.data_version()
        self.view.change_generation = generation
        if version == self.view.data_version:
            return False
        return await self.refresh()

    async def refresh(self) -> bool:
        """Read what changed since the view's modseq and apply it.

        A mailbox opened without its view refreshes the shared view instead, if a
        session opened one meanwhile (so that session sees this process's commit at once).
        """
        if not self.loaded:
            shared = self.user.shared_mailbox(self.info.id)
            return await shared.refresh() if shared is not None and shared.loaded else False
        mid = self.info.id
        async with self._refresh_lock:
            since = self.view.highestmodseq

            def q(conn: sqlite3.Connection) -> tuple[list[Any], list[int], Any, int]:
                version = read_data_version(conn)
                conn.execute("BEGIN")
                try:
                    mb = conn.execute(
                        "SELECT highestmodseq, uidnext, keywords, first_recent_uid"
                        " FROM mailboxes WHERE id = ?",
                        (mid,),
                    ).fetchone()
                    changed = conn.execute(
                        "SELECT uid, flags, keywords, modseq, size, internal_date FROM messages"
                        " WHERE mailbox_id = ? AND modseq > ?",
                        (mid, since),
                    ).fetchall()
                    gone = [
                        r[0]
                        for r in conn.execute(
                            "SELECT uid FROM expunged WHERE mailbox_id = ? AND modseq > ?",
                            (mid, since),
                        )
                    ]
                finally:
                    conn.execute("COMMIT")
                return changed, gone, mb, version

            changed, gone, mb, version = await self.user.db.read(q)
            if mb is None:
                self.deleted = True
                raise MailboxNotFound(f"mailbox {self.info.name!r} was deleted")
            self.view.data_version = version
            view = self.view
            view.first_recent_uid = max(view.first_recent_uid, mb[3])
            return view.apply(changed, gone, mb[0], mb[1], mb[2])

    async def claim_recent(self) -> tuple[int, int] | None:
        """Claim the recent messages no session has claimed yet (RFC 3501 ``\\Recent``:
        the first session to be told about a message sees it as recent).

        Atomic across processes: of sessions claiming at once, one gets the UIDs.
        Nothing is written when the view knows of nothing to claim.

        Returns:
            The claimed UIDs as ``(first, end)`` (half-open), or None.
        """
        view = self.view
        if view.first_recent_uid >= view.uidnext:
            return None
        mid = self.info.id

        def claim(conn: sqlite3.Connection) -> tuple[int, int] | None:
            row = conn.execute(
                "SELECT first_recent_uid, uidnext FROM mailboxes WHERE id = ?", (mid,)
            ).fetchone()
            if row is None:
                raise MailboxNotFound(f"mailbox {self.info.name!r} was deleted")
            first, end = row
            if first >= end:
                return None
            conn.execute("UPDATE mailboxes SET first_recent_uid = ? WHERE id = ?", (end, mid))
            return first, end

        claimed = await self.user.db.write(claim)
        if claimed is not None:
            view.first_recent_uid = max(view.first_recent_uid, claimed[1])
        else:
            view.first_recent_uid = max(view.first_recent_uid, view.uidnext)
        return claimed

    def mark_deleted(self) -> None:
        """The mailbox was deleted: further use raises ``MailboxNotFound``."""
        self.deleted = True

    async def close(self) -> None:
        """Release this user of the shared view."""
        self.refs -= 1
        if self.refs <= 0:
            self.user.forget_mailbox(self)

    # ------------------------------------------------------------- reading

    async def records(self, uids: Sequence[int]) -> list[MailRecord]:
        """Index records of ``uids`` (in the order given; missing ones are skipped)."""
        mid = self.info.id
        wanted = list(uids)

        def q(conn: sqlite3.Connection) -> dict[int, MailRecord]:
            out: dict[int, MailRecord] = {}
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                lo, hi = min(chunk), max(chunk)
                if hi - lo < 2 * len(chunk):
                    # Dense UIDs (``1:*``, a range): one range scan of the primary key is
                    # much cheaper than a lookup per UID; the few extra rows are skipped.
                    keep = set(chunk)
                    for row in conn.execute(
                        f"SELECT {MESSAGE_COLUMNS} FROM messages m LEFT JOIN map"
                        " ON m.map_uid = map.map_uid"
                        " WHERE m.mailbox_id = ? AND m.uid BETWEEN ? AND ?",
                        (mid, lo, hi),
                    ):
                        if row[0] in keep:
                            out[row[0]] = MailRecord.from_row(row)
                    continue
                marks = ",".join("?" * len(chunk))
                for row in conn.execute(
                    f"SELECT {MESSAGE_COLUMNS} FROM messages m LEFT JOIN map"
                    f" ON m.map_uid = map.map_uid WHERE m.mailbox_id = ? AND m.uid IN ({marks})",
                    (mid, *chunk),
                ):
                    out[row[0]] = MailRecord.from_row(row)
            return out

        found = await self.user.db.read(q)
        return [found[u] for u in wanted if u in found]

    async def record(self, uid: int) -> MailRecord:
        """The index record of ``uid``.  Raises ``MessageNotFound``."""
        recs = await self.records([uid])
        if not recs:
            raise MessageNotFound(f"message {uid} was expunged")
        return recs[0]

    async def open_message(self, record: MailRecord, *, want_body: bool = True) -> DboxMessage:
        """Open the stored message (headers of the dbox record read; body not yet).

        ``want_body`` is a hint: when only the header will be read, less is read ahead
        while locating the message.  An mdbox record that ``purge`` moved after
        ``record`` was read is looked up again.

        Raises:
            MessageNotFound: the message was expunged.
            DboxCorruptedError: the stored record is damaged (fsck repairs it).
            FsError: an I/O error.
        """
        fmt = self.user.format
        try:
            return await fmt.open_message(self.info, record, want_body=want_body)
        except FsNotFound:
            if record.map_uid is None:
                raise
            fresh = await self.record(record.uid)
            if (fresh.file_id, fresh.offset) == (record.file_id, record.offset):
                raise
            return await fmt.open_message(self.info, fresh, want_body=want_body)

    async def read_small_bodies(
        self, records: Sequence[MailRecord], limit: int
    ) -> list[bytes | Exception | None]:
        """Read the IMAP bodies of small messages together, each whole and checked as
        :meth:`open_message` checks it; nothing stays open.

        Returns, per record in order: the body; the error reading it raised
        (``FsError``, ``FsNotFound`` when the file is gone, or ``DboxCorruptedError``);
        or None where :meth:`open_message` must be used instead (larger than ``limit``
        bytes, a Dovecot v2 file, a format that cannot do better: all None).
        """
        return await self.user.format.read_small_bodies(self.info, records, limit)

    def read_small_bodies_now(
        self, records: Sequence[MailRecord], limit: int
    ) -> list[bytes | Exception | None]:
        """:meth:`read_small_bodies` for as many of the first ``records`` as can be read
        without waiting (their files in the page cache): their results, in order; the
        rest are for :meth:`read_small_bodies`."""
        return self.user.format.read_small_bodies_now(self.info, records, limit)

    async def set_cache(self, uid: int, cache: bytes) -> None:
        """Store parsed-structure cache bytes for ``uid`` (no modseq change)."""
        mid = self.info.id
        await self.user.db.write(
            lambda c: c.execute(
                "UPDATE messages SET cache = ? WHERE mailbox_id = ? AND uid = ?", (cache, mid, uid)
            )
        )

    async def set_cache_many(self, rows: Iterable[tuple[int, bytes]]) -> None:
        """Store parsed-structure cache bytes for many ``(uid, cache)`` in one transaction.

        No modseq change; rows of messages expunged meanwhile are ignored.  Visible to
        every reader when this returns.
        """
        mid = self.info.id
        items = [(cache, mid, uid) for uid, cache in rows]
        if not items:
            return
        await self.user.db.write(
            lambda c: c.executemany(
                "UPDATE messages SET cache = ? WHERE mailbox_id = ? AND uid = ?", items
            )
        )

    async def open_stream(
        self,
        message: int | MailRecord,
        start: int = 0,
        end: int | None = None,
        *,
        readahead: int | None = None,
    ) -> tuple[DboxMessage, BodyStream]:
        """Open a message and a non-blocking stream over its IMAP bytes ``[start, end)``.

        The seed's ``mail_get_nonblocking_stream()``: the stream's ``read()`` returns
        buffered bytes, ``b""`` at the end, or raises ``BlockingIOError`` after starting
        the read; ``set_readable_callback(cb)`` or ``await stream.wait_readable()`` says
        when to try again (``aread``/``async for`` wrap that), and ``file_range`` gives
        ``(handle, offset, length)`` for ``os.sendfile`` when the bytes are served as
        stored.  Nothing of the body is read before the first ``read``.

        Args:
            message: A UID or an index record (saves the index lookup).
            start: First IMAP byte.  end: Just past the last one (None: the end).
            readahead: Bytes per read (default: ``storage.readahead``).

        Returns:
            ``(message, stream)``; the caller owns the message: ``await message.aclose()``
            when done with it and the stream.

        Raises:
            MessageNotFound: the UID is not (or no longer) in the mailbox.
            CorruptedMessage: the message file is damaged or missing.
            StorageUnavailable: an I/O failure.
        """
        from aiodbox.storage.fetch import open_record

        record = await self.record(message) if isinstance(message, int) else message
        msg = await open_record(self, record)
        if msg is None:
            raise MessageNotFound(f"message {record.uid} was expunged")
        size = self.user.storage.config.readahead if readahead is None else readahead
        try:
            stream = msg.open_body(start, end, readahead=size)
        except BaseException:
            await msg.aclose()
            raise
        return msg, stream

    def fetch_many(
        self,
        uids: Sequence[int],
        parts: FetchParts,
        *,
        prefetch: int | None = None,
        readahead: int | None = None,
    ) -> AsyncGenerator[FetchedMessage, None]:
        """Messages ``uids`` in that order, up to ``prefetch`` loaded at once.

        See :func:`aiodbox.storage.fetch.fetch_many` (same arguments and results).
        """
        from aiodbox.storage.fetch import fetch_many

        return fetch_many(self, uids, parts, prefetch=prefetch, readahead=readahead)

    def search(
        self,
        criteria: Criterion,
        *,
        uids: Sequence[int] | None = None,
        prefetch: int | None = None,
        tz: datetime.tzinfo = datetime.UTC,
        readahead: int | None = None,
    ) -> AsyncGenerator[int, None]:
        """UIDs of the messages matching ``criteria``, ascending, as they are decided.

        See :func:`aiodbox.storage.search.search` (same arguments and results).
        """
        from aiodbox.storage.search import search

        return search(self, criteria, uids=uids, prefetch=prefetch, tz=tz, readahead=readahead)

    # ------------------------------------------------------------ changing

    def transaction(self) -> Transaction:
        """A new transaction on this mailbox."""
        if self.deleted:
            raise MailboxNotFound(f"mailbox {self.info.name!r} was deleted")
        return Transaction(self)

    async def save(self, data: bytes | AsyncIterable[bytes], **kwargs: Any) -> int:
        """Save one message in its own transaction; return its UID."""
        tx = self.transaction()
        await tx.save(data, **kwargs)
        result = await tx.commit()
        return result.saved_uids[0]

    async def store(
        self,
        uids: Iterable[int],
        mode: str,
        flags: int = 0,
        keywords: Iterable[str] = (),
        *,
        unchanged_since: int | None = None,
    ) -> CommitResult:
        """Change flags in one transaction (see :meth:`Transaction.update_flags`)."""
        tx = self.transaction()
        tx.update_flags(uids, mode, flags, keywords, unchanged_since=unchanged_since)
        return await tx.commit()

    async def expunge(
        self, uids: Iterable[int] | None = None, *, deleted_only: bool = True
    ) -> list[int]:
        """Expunge the messages flagged ``\\Deleted`` (only among ``uids`` if given).

        With ``deleted_only=False`` the given ``uids`` go whatever their flags (MOVE).

        Returns:
            The expunged UIDs, ascending.  Visible to everyone when this returns; the
            message files are released afterwards (sdbox deletes them, mdbox leaves the
            bytes to ``purge``).
        """
        mid = self.info.id
        only = None if uids is None else sorted(set(uids))
        fmt = self.user.format
        mask = DELETED if deleted_only or only is None else 0

        def tx(conn: sqlite3.Connection) -> list[tuple[int, str | None, int | None]]:
            if only is None:
                rows = conn.execute(
                    "SELECT uid, file_name, map_uid FROM messages WHERE mailbox_id = ?"
                    " AND flags & ? ORDER BY uid",
                    (mid, mask),
                ).fetchall()
            else:
                rows = []
                for start in range(0, len(only), 500):
                    chunk = only[start : start + 500]
                    marks = ",".join("?" * len(chunk))
                    rows += conn.execute(
                        f"SELECT uid, file_name, map_uid FROM messages WHERE mailbox_id = ?"
                        f" AND (flags & ? OR ? = 0) AND uid IN ({marks})",
                        (mid, mask, mask, *chunk),
                    ).fetchall()
                rows.sort()
            if not rows:
                return []
            modseq = _bump_modseq(conn, mid)
            fmt.release_in_tx(conn, rows)
            for uid, file_name, _map_uid in rows:
                conn.execute("DELETE FROM messages WHERE mailbox_id = ? AND uid = ?", (mid, uid))
                conn.execute(
                    "INSERT OR REPLACE INTO expunged (mailbox_id, uid, modseq, file_name)"
                    " VALUES (?, ?, ?, ?)",
                    (mid, uid, modseq, file_name),
                )
            return rows

        rows = await self.user.db.write(tx)
        if rows:
            await self.refresh()
            await fmt.after_expunge(self.info, rows)
        return [r[0] for r in rows]

    async def copy(self, uids: Iterable[int], dest: Mailbox) -> CommitResult:
        """Copy messages into ``dest`` (COPY); flags and internal dates are kept."""
        tx = self.transaction()
        await tx.copy(uids, dest)
        return await tx.commit()

    async def move(self, uids: Iterable[int], dest: Mailbox) -> CommitResult:
        """Copy, then flag ``\\Deleted`` and expunge the originals (MOVE)."""
        wanted = list(uids)
        result = await self.copy(wanted, dest)
        moved = [src for src, _ in result.copied]
        if moved:
            await self.expunge(moved, deleted_only=False)
        return result
