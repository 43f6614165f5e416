"""Message files: single-dbox (a file per message) and multi-dbox (records in shared files).

Theory of operation
-------------------
A :class:`MailFormat` is what a transaction needs from the files: stream a message into
a new, still invisible record (``begin_save``), make saved records durable under their
final names (``commit_saves``), copy records (``copy_files``), and, inside the index
transaction, turn a committed record into index columns (``location_in_tx``).

**sdbox** writes each message to ``mailboxes/<mailbox guid>/u.<uid>``: a temp file while
streaming, committed with ``commit("u.<uid>")`` (fsync, link) once the UID is reserved.
No locks.  Copying hard-links the file where the backend can.  Expunge deletes files.

**mdbox** appends records to ``storage/m.<file_id>`` files.  A save locks a file with
``try_lock`` (a locked file is skipped, never waited for), keeps it for the rest of its
transaction while the record fits (``size + message + 512 <= rotate size``), and commits
the appends before the index transaction.  The ``map`` table gives every record a
``map_uid`` with a refcount: a copy is a refcount increment, an expunge a decrement, and
``purge`` rewrites files that hold dead records (never rewriting a file in place).
"""

from __future__ import annotations

import abc
import asyncio
import collections
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiodbox.dbox.codec import FileHeader
from aiodbox.dbox.file import (
    DboxCorruptedError,
    DboxMessage,
    MdboxFile,
    RecordAppender,
    SdboxInMemory,
    SdboxWriter,
    create_mdbox_file,
    create_sdbox,
    mdbox_body_from_span,
    mdbox_record_span,
    open_mdbox_file,
    open_mdbox_message,
    open_mdbox_message_now,
    open_sdbox_message,
    read_file_header,
    read_span,
    sdbox_body_from_bytes,
)
from aiodbox.dbox.file_read import HEADER_HEAD_READ, MDBOX_WHOLE_READ, SDBOX_HEAD_READ
from aiodbox.dbox.v2 import V2FileHeader
from aiodbox.fs import FS, CreateMode, FileHandle, FsError, FsNotFound, StagedFile
from aiodbox.index.db import before_commit
from aiodbox.storage.errors import StorageError

if TYPE_CHECKING:
    import sqlite3

    from aiodbox.storage.mailbox import MailRecord
    from aiodbox.storage.storage import MailboxInfo, User

METADATA_ALLOWANCE = 512
"""Bytes assumed for a record's metadata when checking the rotate size (the seed)."""
MDBOX_RUN_GAP = 4096
"""Records at most this far apart in an mdbox file are read together
(``read_small_bodies``)."""
MDBOX_RUN_MAX = 256 << 10
"""Largest read ``read_small_bodies`` makes for records that lie one after the other."""


@dataclass
class Location:
    """Where a committed record is; ``imap_size`` is the message size IMAP serves."""

    imap_size: int
    file_name: str | None = None
    file_id: int | None = None
    offset: int | None = None
    record_size: int | None = None
    file_size: int | None = None  # mdbox: the file's size after the commit


@dataclass
class StagedSave:
    """A save's data, durable and invisible until the index job that makes it visible
    (:meth:`MailFormat.stage_saves`): an sdbox file under a temp name (``file``; the
    job names it), or an mdbox record committed to its file (``location``)."""

    imap_size: int
    file: StagedFile | None = None
    location: Location | None = None


class SaveHandle(abc.ABC):
    """One message being saved."""

    committed = False

    @abc.abstractmethod
    async def write(self, chunk: bytes) -> None:
        """Append body bytes (back-pressure applies)."""

    @abc.abstractmethod
    async def finish_data(self) -> None:
        """The body is complete (the record is closed, still invisible)."""

    @abc.abstractmethod
    async def abort(self) -> None:
        """Discard the record if it was not committed (idempotent)."""


@dataclass
class SaveContext:
    """Per-transaction state a format may keep (mdbox: the file it holds locked)."""

    data: dict[str, Any] = field(default_factory=dict)


class MailFormat(abc.ABC):
    """Message files of one user; see the module docstring."""

    name = "format"

    def __init__(self, user: User) -> None:
        self.user = user
        self.fs = user.fs

    @abc.abstractmethod
    async def begin_save(
        self,
        mailbox: MailboxInfo,
        guid: str,
        received: int,
        size_hint: int | None,
        ctx: SaveContext,
    ) -> SaveHandle:
        """Start a record for one message."""

    @abc.abstractmethod
    async def commit_saves(
        self, mailbox: MailboxInfo, handles: list[SaveHandle], uids: list[int]
    ) -> list[Location]:
        """Make the records durable under their final names (before the index tx)."""

    async def stage_saves(
        self, mailbox: MailboxInfo, handles: list[SaveHandle]
    ) -> list[StagedSave] | None:
        """Make the saves' data durable before their UIDs are known (sdbox: whole files
        under temp names; mdbox: records committed to their locked files), so that one
        index job can take the UIDs, name the files and insert the rows (no reservation
        before: one index round trip less per save).  None where this format or FS
        cannot (then nothing was written: use :meth:`commit_saves`)."""
        return None

    def name_staged_in_tx(self, staged: StagedSave, uid: int) -> Location:
        """In the index job: give ``staged`` its final name for ``uid`` (durable with the
        job's ``COMMIT``).  Raises ``FileExistsError`` if that name is taken."""
        raise NotImplementedError

    def unname_staged_in_tx(self, staged: StagedSave) -> None:
        """In the index job: take back the name :meth:`name_staged_in_tx` gave."""
        raise NotImplementedError

    @abc.abstractmethod
    async def copy_files(
        self, src: MailboxInfo, dest: MailboxInfo, records: list[MailRecord], uids: list[int]
    ) -> list[Location]:
        """Make the files the copies need (sdbox: links); nothing for mdbox."""

    @abc.abstractmethod
    def location_in_tx(
        self, conn: sqlite3.Connection, loc: Location
    ) -> tuple[str | None, int | None]:
        """(file_name, map_uid) for a saved record, inside the index transaction."""

    @abc.abstractmethod
    def copy_location_in_tx(
        self, conn: sqlite3.Connection, rec: MailRecord, loc: Location
    ) -> tuple[str | None, int | None]:
        """(file_name, map_uid) for a copy, inside the index transaction."""

    def release_in_tx(self, conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
        """Messages ``(uid, file_name, map_uid)`` are leaving the index."""
        return

    async def after_expunge(self, mailbox: MailboxInfo, rows: list[tuple[Any, ...]]) -> None:
        """Release the files of expunged messages, after the index transaction."""
        return

    async def discard_committed(self, mailbox: MailboxInfo, locations: list[Location]) -> None:
        """Undo ``commit_saves`` after the index transaction failed (best effort)."""
        return

    async def saves_indexed(self, handles: list[SaveHandle]) -> None:
        """The index transaction after :meth:`commit_saves` or :meth:`stage_saves` of
        ``handles`` ended (committed or not): release what had to stay held until then."""
        return

    def pending_location(self, handle: SaveHandle) -> tuple[int, int, int] | None:
        """(file_id, offset, body size) of a finished, uncommitted mdbox record; else None.

        Recorded in the ``pending`` table before the data is committed, so that a crash
        before the index transaction leaves a record that recovery can find and adopt.
        """
        return None

    @abc.abstractmethod
    async def open_message(
        self, mailbox: MailboxInfo, rec: MailRecord, *, want_body: bool = True
    ) -> DboxMessage:
        """Open a stored message for reading (``want_body``: a read-ahead hint)."""

    small_batches = False
    """True if :meth:`read_small_bodies` reads many small messages in fewer round trips
    than one :meth:`open_message` each."""
    small_overlap = True
    """Start the next :meth:`read_small_bodies` group while the last one is being
    delivered (its reads take a round trip each); else a group is the whole prefetch
    window."""

    async def read_small_bodies(
        self, mailbox: MailboxInfo, recs: Sequence[MailRecord], limit: int
    ) -> list[bytes | Exception | None]:
        """Read the IMAP bodies of small messages together, each whole, each checked as
        :meth:`open_message` checks it; no message stays open.

        Returns, per record: the body; the error reading it raised (``FsError``,
        ``DboxCorruptedError``); or None if :meth:`open_message` must handle it (larger
        than ``limit``, a Dovecot v2 file).
        """
        return [None] * len(recs)

    def read_small_bodies_now(
        self, mailbox: MailboxInfo, recs: Sequence[MailRecord], limit: int
    ) -> list[bytes | Exception | None]:
        """:meth:`read_small_bodies` without waiting, as far as that goes: the results for
        the first records (possibly none) that could be served at once; the others are
        left to :meth:`read_small_bodies`."""
        return []

    def open_message_now(self, mailbox: MailboxInfo, rec: MailRecord) -> DboxMessage | None:
        """Open a small message with its body already read, if that is possible without
        waiting (mdbox: its file's handle and header are known and the record is in the
        page cache); else None, and :meth:`open_message` is the way.

        Raises:
            DboxCorruptedError: the record is damaged.
            FsError: an I/O error.
        """
        return None


async def _discard_staged(staged: StagedSave) -> None:
    if staged.file is not None:
        await staged.file.discard()


SMALL_SAVE_MAX = 64 << 10
"""sdbox messages announced at most this large are built in memory and written with one
``FS.write_file`` at commit (the local FS's handle would have held them in its 256 KiB
write buffer until the commit anyway); larger ones stream into their file as they come."""


class _SdboxSave(SaveHandle):
    """An sdbox file being saved: streamed (``writer``), or built in memory (``small``)
    until the commit; a small one that outgrows :data:`SMALL_SAVE_MAX` (its size hint
    was too small) turns into a streamed one."""

    def __init__(
        self,
        fs: FS,
        directory: str,
        guid: str,
        received: int,
        *,
        writer: SdboxWriter | None = None,
        small: SdboxInMemory | None = None,
    ) -> None:
        self.fs = fs
        self.directory = directory
        self.guid = guid
        self.received = received
        self.writer = writer
        self.small = small
        self._small_file: bytes | None = None
        self.aborted = False

    async def write(self, chunk: bytes) -> None:
        small = self.small
        if small is not None:
            if small.body_size + len(chunk) <= SMALL_SAVE_MAX:
                small.write(chunk)
                return
            self.small = None
            self.writer = await create_sdbox(
                self.fs, self.directory, guid=self.guid, received=self.received
            )
            for part in small.body():
                await self.writer.write(part)
        assert self.writer is not None
        await self.writer.write(chunk)

    async def finish_data(self) -> None:
        return None

    def small_file(self) -> bytes:
        """The whole file of a message built in memory (made once)."""
        assert self.small is not None
        if self._small_file is None:
            self._small_file = self.small.finish()
        return self._small_file

    async def commit(self, name: str) -> int:
        """Make the file visible, complete, as ``name``; return the stored body size."""
        if self.small is not None:
            data = self.small_file()
            await self.fs.write_file(f"{self.directory}/{name}", data, CreateMode.FAIL_IF_EXISTS)
            self.committed = True
            return self.small.metadata.size
        assert self.writer is not None
        written = await self.writer.finish(name)
        self.committed = True
        return written.stored_size

    async def abort(self) -> None:
        if not self.committed and not self.aborted:
            self.aborted = True
            self.small = None
            if self.writer is not None:
                await self.writer.abort()


class SdboxFormat(MailFormat):
    """Single-dbox: one ``u.<uid>`` file per message, no locks."""

    name = "sdbox"

    async def begin_save(
        self,
        mailbox: MailboxInfo,
        guid: str,
        received: int,
        size_hint: int | None,
        ctx: SaveContext,
    ) -> SaveHandle:
        directory = self.user.mailbox_dir(mailbox.guid)
        if size_hint is not None and size_hint <= SMALL_SAVE_MAX:
            small = SdboxInMemory(guid=guid, received=received)
            return _SdboxSave(self.fs, directory, guid, received, small=small)
        writer = await create_sdbox(self.fs, directory, guid=guid, received=received)
        return _SdboxSave(self.fs, directory, guid, received, writer=writer)

    async def commit_saves(
        self, mailbox: MailboxInfo, handles: list[SaveHandle], uids: list[int]
    ) -> list[Location]:
        async def one(h: SaveHandle, uid: int) -> Location:
            assert isinstance(h, _SdboxSave)
            name = f"u.{uid}"
            return Location(await h.commit(name), file_name=name)

        return list(await asyncio.gather(*(one(h, u) for h, u in zip(handles, uids, strict=True))))

    async def stage_saves(
        self, mailbox: MailboxInfo, handles: list[SaveHandle]
    ) -> list[StagedSave] | None:
        """Messages built in memory are staged whole (one engine job each) where the FS
        can stage; streamed ones are not."""
        if not all(isinstance(h, _SdboxSave) and h.small is not None for h in handles):
            return None
        directory = self.user.mailbox_dir(mailbox.guid)

        async def one(h: SaveHandle) -> StagedSave | None:
            assert isinstance(h, _SdboxSave) and h.small is not None
            data = h.small_file()
            staged = await self.fs.stage_file(directory, data)
            return None if staged is None else StagedSave(h.small.metadata.size, file=staged)

        first = await one(handles[0])
        if first is None:
            return None
        rest = await asyncio.gather(*(one(h) for h in handles[1:]), return_exceptions=True)
        out = [first, *(r for r in rest if isinstance(r, StagedSave))]
        errors = [r for r in rest if isinstance(r, BaseException)]
        if errors:
            for st in out:
                await _discard_staged(st)
            raise errors[0]
        return out

    def name_staged_in_tx(self, staged: StagedSave, uid: int) -> Location:
        file = staged.file
        assert file is not None
        name = f"u.{uid}"
        file.publish_blocking(name)
        before_commit(("sdbox-dir", file.directory), file.sync_directory_blocking)
        return Location(staged.imap_size, file_name=name)

    def unname_staged_in_tx(self, staged: StagedSave) -> None:
        file = staged.file
        if file is not None and file.name is not None:
            file.unpublish_blocking(file.name)

    async def copy_files(
        self, src: MailboxInfo, dest: MailboxInfo, records: list[MailRecord], uids: list[int]
    ) -> list[Location]:
        src_dir = self.user.mailbox_dir(src.guid)
        dst_dir = self.user.mailbox_dir(dest.guid)

        async def one(rec: MailRecord, uid: int) -> Location:
            name = f"u.{uid}"
            await self.fs.copy(f"{src_dir}/{rec.file_name}", f"{dst_dir}/{name}")
            return Location(rec.size, file_name=name)

        return list(await asyncio.gather(*(one(r, u) for r, u in zip(records, uids, strict=True))))

    def location_in_tx(
        self, conn: sqlite3.Connection, loc: Location
    ) -> tuple[str | None, int | None]:
        return loc.file_name, None

    def copy_location_in_tx(
        self, conn: sqlite3.Connection, rec: MailRecord, loc: Location
    ) -> tuple[str | None, int | None]:
        return loc.file_name, None

    async def after_expunge(self, mailbox: MailboxInfo, rows: list[tuple[Any, ...]]) -> None:
        directory = self.user.mailbox_dir(mailbox.guid)

        async def one(file_name: str) -> None:
            try:
                await self.fs.delete(f"{directory}/{file_name}")
            except FsNotFound:
                pass

        await asyncio.gather(*(one(r[1]) for r in rows if r[1]))

    async def discard_committed(self, mailbox: MailboxInfo, locations: list[Location]) -> None:
        await self.after_expunge(mailbox, [(0, loc.file_name, None) for loc in locations])

    small_batches = True

    def read_small_bodies_now(
        self, mailbox: MailboxInfo, recs: Sequence[MailRecord], limit: int
    ) -> list[bytes | Exception | None]:
        directory = self.user.mailbox_dir(mailbox.guid)
        out: list[bytes | Exception | None] = []
        for rec in recs:
            if rec.file_name is None:
                break
            path = f"{directory}/{rec.file_name}"
            try:
                data = self.fs.read_small_file_now(path, limit)
            except BlockingIOError:
                break
            out.append(_small_body(path, data, rec))
        return out

    async def read_small_bodies(
        self, mailbox: MailboxInfo, recs: Sequence[MailRecord], limit: int
    ) -> list[bytes | Exception | None]:
        directory = self.user.mailbox_dir(mailbox.guid)
        named = [rec for rec in recs if rec.file_name is not None]  # no file: nothing to read
        paths = [f"{directory}/{rec.file_name}" for rec in named]
        read = await self.fs.read_small_files(paths, limit)
        found = {id(rec): (path, data) for rec, path, data in zip(named, paths, read, strict=True)}
        out: list[bytes | Exception | None] = []
        for rec in recs:
            if id(rec) not in found:
                out.append(None)
                continue
            path, data = found[id(rec)]
            out.append(data if isinstance(data, Exception) else _small_body(path, data, rec))
        return out

    async def open_message(
        self, mailbox: MailboxInfo, rec: MailRecord, *, want_body: bool = True
    ) -> DboxMessage:
        if rec.file_name is None:
            raise StorageError(f"message {rec.uid} has no file name in the index")
        return await open_sdbox_message(
            self.fs,
            f"{self.user.mailbox_dir(mailbox.guid)}/{rec.file_name}",
            head_read=SDBOX_HEAD_READ if want_body else HEADER_HEAD_READ,
        )


class _MdboxSave(SaveHandle):
    def __init__(self, fmt: MdboxFormat, held: _HeldFile, appender: RecordAppender) -> None:
        self.fmt = fmt
        self.held = held
        self.appender = appender
        self.offset = -1
        self.body_size = 0
        self.aborted = False

    async def write(self, chunk: bytes) -> None:
        await self.appender.write(chunk)

    async def finish_data(self) -> None:
        self.offset, self.body_size, _meta = await self.appender.finish()
        self.held.streaming = False

    async def abort(self) -> None:
        if self.committed or self.aborted:
            return
        self.aborted = True
        await self.fmt.release(self.held, commit=False)


@dataclass
class _HeldFile:
    file_id: int
    file: MdboxFile
    streaming: bool = False
    users: int = 0


SPARE_FILES = 4
"""mdbox files a user's format keeps open between saves: one per session saving at once
(four sessions saving with two kept files: 749 msg/s; with four: 920, same run)."""
SPARE_FILES_PER_PROCESS = 256
"""The kept files of all users together: each holds a descriptor, and a server delivering
to thousands of users must not keep one open per user it ever saved for."""
_spares_lru: collections.OrderedDict[tuple[int, int], weakref.ref[MdboxFormat]] = (
    collections.OrderedDict()
)


class MdboxFormat(MailFormat):
    """Multi-dbox: records in ``storage/m.<file_id>`` files, a map with refcounts."""

    name = "mdbox"

    def __init__(self, user: User) -> None:
        super().__init__(user)
        self.rotate_size = user.storage.config.mdbox_rotate_size
        self._readers: collections.OrderedDict[int, FileHandle] = collections.OrderedDict()
        self._headers: dict[int, FileHeader | V2FileHeader] = {}
        self._header_reads: dict[int, asyncio.Future[FileHeader | V2FileHeader]] = {}
        self._reader_limit = 64
        self._busy: set[int] = set()  # files a transaction of this process holds locked
        # Files kept open (unlocked) after a save committed, for the next save to lock at
        # once: no candidate query, open, header read or stat per APPEND.
        self._spare: collections.OrderedDict[int, MdboxFile] = collections.OrderedDict()

    def file_path(self, file_id: int) -> str:
        """The FS path of ``m.<file_id>``."""
        return self.user.path("storage", f"m.{file_id}")

    # --------------------------------------------------------------- saving

    async def _candidates(self, need: int) -> list[int]:
        limit = self.rotate_size - need

        def q(conn: sqlite3.Connection) -> list[int]:
            return [
                r[0]
                for r in conn.execute(
                    "SELECT file_id FROM files WHERE size <= ? ORDER BY file_id DESC LIMIT 4",
                    (limit,),
                )
            ]

        return await self.user.db.read(q)

    def _lock_spare(self, need: int) -> _HeldFile | None:
        """A spare file (see ``_spare``) locked now, with room for ``need`` more bytes;
        None if none has (or none can be locked without waiting)."""
        for file_id in reversed(list(self._spare)):  # the most recently used first
            if file_id in self._busy:
                continue
            f = self._spare[file_id]
            if f.size + need > self.rotate_size:
                self._drop_spare(file_id)
                continue
            try:
                if not f.try_lock():
                    continue  # another process is appending to it: try it next time
                size = f.handle.size_under_lock()
            except FsError:  # purged (deleted) since, or broken
                size = None
            if size is None or size + need > self.rotate_size:
                self._drop_spare(file_id)  # (closing drops the lock)
                continue
            f.set_locked_size(size)
            self._take_spare(file_id)
            self._busy.add(file_id)
            return _HeldFile(file_id, f)
        return None

    def _keep_spare(self, file_id: int, f: MdboxFile) -> None:
        """Unlock ``f`` (committed) and keep it open for the next save (the least recently
        used kept file beyond ``SPARE_FILES`` of this user, or beyond
        ``SPARE_FILES_PER_PROCESS`` of all users, is closed)."""
        f.unlock()
        self._spare[file_id] = f
        self._spare.move_to_end(file_id)
        key = (id(self), file_id)
        _spares_lru[key] = weakref.ref(self)
        _spares_lru.move_to_end(key)
        while len(self._spare) > SPARE_FILES:
            self._drop_spare(next(iter(self._spare)))
        while len(_spares_lru) > SPARE_FILES_PER_PROCESS:
            (_fmt_id, old_id), ref = _spares_lru.popitem(last=False)
            owner = ref()
            if owner is not None:
                owner._drop_spare(old_id)

    def _take_spare(self, file_id: int) -> None:
        del self._spare[file_id]
        _spares_lru.pop((id(self), file_id), None)

    def _drop_spare(self, file_id: int) -> None:
        f = self._spare.pop(file_id, None)
        _spares_lru.pop((id(self), file_id), None)
        if f is not None:
            f.close()

    async def _lock_file(self, need: int) -> _HeldFile:
        spare = self._lock_spare(need)
        if spare is not None:
            return spare
        for file_id in await self._candidates(need):
            if file_id in self._busy:
                continue  # another transaction of this process has it: its lock is taken
            path = self.file_path(file_id)
            try:
                f = await open_mdbox_file(self.fs, path)
            except FsNotFound:
                continue
            if f.size + need <= self.rotate_size and file_id not in self._busy and f.try_lock():
                # The size under the lock: the file is still there (purge may have
                # deleted it between our open and our lock) and its size as of now.
                try:
                    size = f.handle.size_under_lock()
                    if size is None:  # (a backend that cannot tell at once)
                        size = (await self.fs.stat(path)).size
                except FsNotFound:
                    size = None
                if size is not None and size + need <= self.rotate_size:
                    f.set_locked_size(size)
                    self._busy.add(file_id)
                    return _HeldFile(file_id, f)
            f.close()
        now = time.time()

        def alloc(conn: sqlite3.Connection) -> int:
            cur = conn.execute("INSERT INTO files (size, created) VALUES (0, ?)", (now,))
            assert cur.lastrowid is not None
            return cur.lastrowid

        file_id = await self.user.db.write(alloc)
        f = await create_mdbox_file(self.fs, self.user.path("storage", f"m.{file_id}.new"))
        if not f.try_lock():  # a created file is ours alone
            raise StorageError("could not lock a new mdbox file")
        await f.commit(f"m.{file_id}")
        size = f.size
        await self.user.db.write(
            lambda c: c.execute("UPDATE files SET size = ? WHERE file_id = ?", (size, file_id))
        )
        self._busy.add(file_id)
        return _HeldFile(file_id, f)

    async def begin_save(
        self,
        mailbox: MailboxInfo,
        guid: str,
        received: int,
        size_hint: int | None,
        ctx: SaveContext,
    ) -> SaveHandle:
        need = (size_hint or 0) + METADATA_ALLOWANCE
        held: _HeldFile | None = ctx.data.get("mdbox")
        if held is not None and (held.streaming or held.file.size + need > self.rotate_size):
            held = None
        if held is None:
            held = await self._lock_file(need)
            ctx.data.setdefault("mdbox_files", []).append(held)
            ctx.data["mdbox"] = held
        held.streaming = True
        held.users += 1
        appender = held.file.append(guid=guid, received=received, orig_mailbox=mailbox.guid)
        return _MdboxSave(self, held, appender)

    async def release(self, held: _HeldFile, *, commit: bool) -> None:
        """Drop one user of a held file; the last one rolls back (if asked) and unlocks."""
        held.users -= 1
        if held.users > 0:
            return
        if not commit:
            held.file.rollback()
        self._busy.discard(held.file_id)
        await held.file.aclose()

    async def commit_saves(
        self, mailbox: MailboxInfo, handles: list[SaveHandle], uids: list[int]
    ) -> list[Location]:
        files: dict[int, _HeldFile] = {}
        for h in handles:
            assert isinstance(h, _MdboxSave)
            files[h.held.file_id] = h.held
        for held in files.values():
            await held.file.commit()
        sizes = {fid: held.file.size for fid, held in files.items()}
        locations = []
        for h in handles:
            assert isinstance(h, _MdboxSave)
            h.committed = True
            locations.append(
                Location(
                    h.body_size,
                    file_id=h.held.file_id,
                    offset=h.offset,
                    record_size=h.body_size,
                    file_size=sizes[h.held.file_id],
                )
            )
        # The files stay locked until the index transaction that points at the records
        # ended (saves_indexed): a purge in between would see them as dead and drop them.
        # (The files' new sizes are recorded by the index transaction: location_in_tx.)
        return locations

    async def stage_saves(
        self, mailbox: MailboxInfo, handles: list[SaveHandle]
    ) -> list[StagedSave] | None:
        """Commit the records to their files (durable; invisible while no map row points
        at them): the index job then takes the UIDs and inserts the map and message rows
        in one step.  The files stay locked until it ended (:meth:`saves_indexed`), which
        is what tells purge and fsck that a save may be under way in them."""
        locations = await self.commit_saves(mailbox, handles, [])
        return [StagedSave(loc.imap_size, location=loc) for loc in locations]

    def name_staged_in_tx(self, staged: StagedSave, uid: int) -> Location:
        assert staged.location is not None
        return staged.location

    def unname_staged_in_tx(self, staged: StagedSave) -> None:
        return None

    async def saves_indexed(self, handles: list[SaveHandle]) -> None:
        """Unlock the files the saves were committed to and keep them for the next save."""
        files: dict[int, _HeldFile] = {}
        for h in handles:
            assert isinstance(h, _MdboxSave)
            if h.committed:
                files[h.held.file_id] = h.held
        for held in files.values():
            held.users = 0
            self._busy.discard(held.file_id)
            self._keep_spare(held.file_id, held.file)  # unlocked now

    async def copy_files(
        self, src: MailboxInfo, dest: MailboxInfo, records: list[MailRecord], uids: list[int]
    ) -> list[Location]:
        return [Location(r.size) for r in records]

    def pending_location(self, handle: SaveHandle) -> tuple[int, int, int] | None:
        assert isinstance(handle, _MdboxSave)
        return handle.held.file_id, handle.offset, handle.body_size

    def location_in_tx(
        self, conn: sqlite3.Connection, loc: Location
    ) -> tuple[str | None, int | None]:
        cur = conn.execute(
            "INSERT INTO map (file_id, offset, size, refcount) VALUES (?, ?, ?, 1)",
            (loc.file_id, loc.offset, loc.record_size),
        )
        if loc.file_size is not None:  # (a hint for choosing files: never shrinks it)
            conn.execute(
                "UPDATE files SET size = ? WHERE file_id = ? AND size < ?",
                (loc.file_size, loc.file_id, loc.file_size),
            )
        return None, cur.lastrowid

    def copy_location_in_tx(
        self, conn: sqlite3.Connection, rec: MailRecord, loc: Location
    ) -> tuple[str | None, int | None]:
        conn.execute("UPDATE map SET refcount = refcount + 1 WHERE map_uid = ?", (rec.map_uid,))
        return None, rec.map_uid

    def release_in_tx(self, conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
        for row in rows:
            if row[2] is not None:
                conn.execute("UPDATE map SET refcount = refcount - 1 WHERE map_uid = ?", (row[2],))

    # -------------------------------------------------------------- reading

    def _reader(self, file_id: int, need_end: int) -> FileHandle:
        h = self._readers.get(file_id)
        if h is not None and h.open_error is None:
            stale = h.size is not None and need_end > h.size and h.fileno() is None
            if not stale:
                self._readers.move_to_end(file_id)
                return h
            # A small file is read whole at open: records appended since lie beyond the
            # copy.  A fresh handle serves them; the old one holds no descriptor and
            # keeps serving the streams still reading it.
            del self._readers[file_id]
        elif h is not None:
            h.close()
        h = self.fs.open(self.file_path(file_id))
        self._readers[file_id] = h
        self._headers.pop(file_id, None)
        while len(self._readers) > self._reader_limit:
            old_id, old = self._readers.popitem(last=False)
            self._headers.pop(old_id, None)
            old.close()
        return h

    async def _header(self, file_id: int, handle: FileHandle) -> FileHeader | V2FileHeader:
        """The file header of ``m.<file_id>``, read once however many loaders ask at once."""
        header = self._headers.get(file_id)
        if header is not None:
            return header
        pending = self._header_reads.get(file_id)
        if pending is None:
            pending = asyncio.ensure_future(read_file_header(handle))
            self._header_reads[file_id] = pending

            def done(fut: asyncio.Future[FileHeader | V2FileHeader]) -> None:
                self._header_reads.pop(file_id, None)
                if not fut.cancelled() and fut.exception() is None:
                    self._headers[file_id] = fut.result()

            pending.add_done_callback(done)
        return await asyncio.shield(pending)

    def forget_reader(self, file_id: int) -> None:
        """Close the cached read and spare handles of a file (purge replaced it)."""
        self._drop_spare(file_id)
        h = self._readers.pop(file_id, None)
        self._headers.pop(file_id, None)
        if h is not None:
            h.close()

    small_batches = True
    small_overlap = False

    def _runs(self, recs: Sequence[MailRecord], limit: int) -> list[tuple[int, int, int, int]]:
        """``(first, stop, start, end)`` per run of ``recs[first:stop]``: records of one
        file that lie one after the other, read as the one span ``[start, end)``; a
        record that cannot be read so is a run of its own with ``end`` 0."""
        runs = []
        i = 0
        while i < len(recs):
            rec = recs[i]
            file_id, start, size = rec.file_id, rec.offset, rec.record_size
            if file_id is None or start is None or size is None or size > limit:
                runs.append((i, i + 1, 0, 0))
                i += 1
                continue
            end = start + mdbox_record_span(start, size)
            j = i + 1
            while j < len(recs):  # extend the run over records that follow closely
                nxt = recs[j]
                if (
                    nxt.file_id != file_id
                    or nxt.offset is None
                    or nxt.record_size is None
                    or nxt.record_size > limit
                    or not end - MDBOX_RUN_GAP <= nxt.offset <= end + MDBOX_RUN_GAP
                ):
                    break
                nxt_end = nxt.offset + mdbox_record_span(nxt.offset, nxt.record_size)
                if nxt_end - start > MDBOX_RUN_MAX:
                    break
                end = max(end, nxt_end)
                j += 1
            runs.append((i, j, start, end))
            i = j
        return runs

    @staticmethod
    def _parse_run(
        recs: Sequence[MailRecord],
        first: int,
        stop: int,
        handle: FileHandle,
        header: FileHeader,
        data: bytes,
        start: int,
    ) -> list[bytes | Exception | None]:
        out: list[bytes | Exception | None] = []
        for r in recs[first:stop]:
            assert r.offset is not None and r.record_size is not None
            try:
                out.append(
                    mdbox_body_from_span(handle, header, r.offset, r.record_size, data, start)
                )
            except DboxCorruptedError as e:
                out.append(e)
        return out

    def read_small_bodies_now(
        self, mailbox: MailboxInfo, recs: Sequence[MailRecord], limit: int
    ) -> list[bytes | Exception | None]:
        out: list[bytes | Exception | None] = []
        for first, stop, start, end in self._runs(recs, limit):
            file_id = recs[first].file_id
            if not end or file_id is None:
                break
            handle = self._reader(file_id, end)
            header = self._headers.get(file_id)  # (after _reader: a new handle forgets it)
            if not isinstance(header, FileHeader):
                break
            try:
                data = handle.pread(end - start, start)
            except (BlockingIOError, FsError):
                break
            out += self._parse_run(recs, first, stop, handle, header, data, start)
        return out

    async def read_small_bodies(
        self, mailbox: MailboxInfo, recs: Sequence[MailRecord], limit: int
    ) -> list[bytes | Exception | None]:
        """Records that lie one after the other in a file are read with one read."""
        out: list[bytes | Exception | None] = [None] * len(recs)
        for first, stop, start, end in self._runs(recs, limit):
            file_id = recs[first].file_id
            if not end or file_id is None:
                continue
            try:
                handle = self._reader(file_id, end)
                header = await self._header(file_id, handle)
                if isinstance(header, FileHeader):
                    data = await read_span(handle, start, end - start)
                    out[first:stop] = self._parse_run(
                        recs, first, stop, handle, header, data, start
                    )
            except (FsError, DboxCorruptedError) as e:
                out[first:stop] = [e] * (stop - first)
        return out

    def open_message_now(self, mailbox: MailboxInfo, rec: MailRecord) -> DboxMessage | None:
        file_id, offset, size = rec.file_id, rec.offset, rec.record_size
        if file_id is None or offset is None or size is None:
            return None
        handle = self._reader(file_id, offset + size)
        header = self._headers.get(file_id)  # (after _reader: a new handle forgets it)
        if header is None:
            return None
        return open_mdbox_message_now(handle, offset, size, header)

    async def open_message(
        self, mailbox: MailboxInfo, rec: MailRecord, *, want_body: bool = True
    ) -> DboxMessage:
        if rec.file_id is None or rec.offset is None:
            raise StorageError(f"message {rec.uid} has no map entry")
        handle = self._reader(rec.file_id, rec.offset + (rec.record_size or 0))
        header = await self._header(rec.file_id, handle)
        return await open_mdbox_message(
            handle,
            rec.offset,
            body_size=rec.record_size,
            header=header,
            whole_limit=MDBOX_WHOLE_READ if want_body else -1,
        )


def make_format(name: str, user: User) -> MailFormat:
    """The format called ``name`` ("sdbox" or "mdbox") for ``user``."""
    if name == "sdbox":
        return SdboxFormat(user)
    if name == "mdbox":
        return MdboxFormat(user)
    raise ValueError(f"unknown mail format {name!r}")


def _small_body(path: str, data: bytes | None, rec: MailRecord) -> bytes | Exception | None:
    """The IMAP body of an sdbox file read whole (None: it was larger than the limit, or
    a file :meth:`SdboxFormat.open_message` must serve)."""
    if data is None:
        return None
    try:
        return sdbox_body_from_bytes(path, data, rec.size)
    except DboxCorruptedError as e:
        return e
