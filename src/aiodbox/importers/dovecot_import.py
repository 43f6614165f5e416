"""Import a Dovecot 2.3 sdbox or mdbox mail root into an aiodbox user.

Theory of operation
===================

What is kept, per mailbox: the name, the mailbox GUID, UIDVALIDITY, every message's UID
(gaps included), message GUID, system flags, keywords and INTERNALDATE (the dbox ``R``
metadata), UIDNEXT, and HIGHESTMODSEQ (raised to at least Dovecot's); for the user: the
subscriptions.  What is not: the save dates (aiodbox sets its own), per-message modseqs
(every imported message gets one at or below HIGHESTMODSEQ), ``\\Recent`` (session state),
mailbox METADATA/ATTRIBUTEs, POP3 UIDLs, and \\Noselect parent folders (aiodbox lists
hierarchy gaps without them).  Dovecot keeps special-use folders in its config, so they
are guessed from well-known names (:data:`aiodbox.importers.target.SPECIAL_USE_NAMES`).
An mdbox message copied to several mailboxes (one map record, refcount > 1) becomes an
independent copy in each.  Dead mdbox records (refcount 0, expunged but not purged) are
never read: only records that a mailbox index points at are imported.

The steps:

1. :func:`~aiodbox.importers.dovecot_layout.scan_dovecot_root` recognises the root (in a
   worker thread: it walks directories); a path that is not a mail root raises
   :class:`~aiodbox.importers.dovecot_layout.DovecotLayoutError` before anything is written.
   Every index (mailbox indexes, the mdbox map, the list index, ``subscriptions``) is read
   in a worker thread and replayed by the sans-IO parsers.
2. Conflicts are checked for all mailboxes before the first write: a target mailbox that
   holds messages is refused (:class:`~aiodbox.importers.target.ImportConflict`) unless it
   carries the source's GUID and UIDVALIDITY, i.e. an earlier run of this import was
   interrupted; then the import resumes at that mailbox's UIDNEXT.
3. Per mailbox, in UID order, the message files are opened through the FS API (a
   ``posix`` FS rooted at the mail root) up to ``prefetch`` ahead, and each body is streamed
   (Dovecot's LF bytes become CRLF IMAP bytes in :meth:`DboxMessage.open_body`) into a
   transaction with the message's own UID; one transaction per ``batch`` messages.
4. UIDNEXT and HIGHESTMODSEQ are raised to Dovecot's; subscriptions are added.

A message whose file is missing or damaged is reported in
:attr:`~aiodbox.importers.target.ImportReport.problems` and skipped; the others are
imported.  An I/O error in the middle of a body (the file changed while being read)
aborts the import: the batch in progress is rolled back, earlier batches stay, and a rerun
resumes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from aiodbox.dbox.codec import FileHeader
from aiodbox.dbox.file import (
    BodyStream,
    DboxError,
    DboxMessage,
    open_mdbox_message,
    open_sdbox_message,
    read_file_header,
)
from aiodbox.dbox.v2 import V2FileHeader
from aiodbox.fs import FS, FileHandle, FsError, open_fs
from aiodbox.importers.dovecot_index import (
    DovecotIndexError,
    DovecotMailboxIndex,
    DovecotMessage,
    MdboxMap,
    system_flag_names,
)
from aiodbox.importers.dovecot_layout import (
    DovecotLayoutError,
    DovecotMailboxDir,
    DovecotRoot,
    load_mailbox_index,
    load_mailbox_list,
    load_mdbox_map,
    load_subscriptions,
    scan_dovecot_root,
)
from aiodbox.importers.dovecot_list import MailboxListEntry
from aiodbox.importers.target import (
    DEFAULT_BATCH,
    BatchSaver,
    ImportConflict,
    ImportReport,
    Incoming,
    MailboxResult,
    ProgressFactory,
    SourceReadError,
    no_progress,
    ordered_prefetch,
    prepare_mailbox,
)
from aiodbox.storage import names
from aiodbox.storage.errors import InvalidMailboxName, MailboxNotFound
from aiodbox.storage.mailbox import flags_to_bits

if TYPE_CHECKING:
    from aiodbox.storage.storage import Storage, User

__all__ = ["DovecotLayoutError", "import_dovecot", "scan_source"]

_MDBOX_OPEN_FILES = 16
"""mdbox ``m.N`` files kept open at once while importing one mailbox."""


async def scan_source(path: str | os.PathLike[str]) -> DovecotRoot:
    """Recognise a Dovecot mail root (in a worker thread).

    A home directory holding exactly one mail root (``~/sdbox`` or ``~/mdbox`` ...) is
    accepted for it.

    Raises:
        DovecotLayoutError: ``path`` is not a Dovecot 2.3 sdbox/mdbox mail root; the
            message says why (and suggests the right path when it can).
    """
    return await asyncio.to_thread(_scan_with_home, Path(path))


def _scan_with_home(path: Path) -> DovecotRoot:
    try:
        return scan_dovecot_root(path)
    except DovecotLayoutError as first:
        if not path.is_dir():
            raise
        if (path / "cur").is_dir() and (path / "new").is_dir():
            raise DovecotLayoutError(
                str(path), "is a Maildir, not an sdbox/mdbox mail root: use 'import maildir'"
            ) from None
        roots: list[DovecotRoot] = []
        with contextlib.suppress(OSError):
            for child in sorted(path.iterdir()):
                if child.is_dir() and not child.is_symlink():
                    with contextlib.suppress(DovecotLayoutError):
                        roots.append(scan_dovecot_root(child))
        if len(roots) == 1:
            return roots[0]
        if len(roots) > 1:
            found = ", ".join(str(r.path) for r in roots)
            raise DovecotLayoutError(
                str(path), f"holds several Dovecot mail roots ({found}); name one of them"
            ) from None
        below = _roots_below(path)
        if below and "did you mean" not in first.reason:
            shown = ", ".join(str(p) for p in below[:3]) + (", ..." if len(below) > 3 else "")
            raise DovecotLayoutError(
                str(path), f"{first.reason}; mail roots below it: {shown} (name one)"
            ) from None
        raise first from None


def _roots_below(path: Path) -> list[Path]:
    """Directories two levels below ``path`` that look like mail roots (``/var/vmail``
    holding home directories holding ``mdbox/``, say): for the error message."""
    found: list[Path] = []
    with contextlib.suppress(OSError):
        for home in sorted(path.iterdir()):
            if not home.is_dir() or home.is_symlink():
                continue
            with contextlib.suppress(OSError):
                for child in sorted(home.iterdir()):
                    if (child / "mailboxes").is_dir() or (child / "storage").is_dir():
                        found.append(child)
            if len(found) > 3:
                break
    return found


@dataclass(frozen=True, slots=True)
class _Opened:
    """A source message opened for streaming, or why it could not be."""

    message: DovecotMessage
    dbox: DboxMessage | None
    error: str | None = None
    mtime: int | None = None
    file_id: int | None = None


class _MdboxFiles:
    """Read handles on ``storage/m.N`` with their parsed headers, shared by messages.

    A handle stays open while a message opened through it is in use (``acquire`` /
    ``release``); at most ``limit`` idle ones are kept.
    """

    def __init__(self, fs: FS, limit: int = _MDBOX_OPEN_FILES) -> None:
        self.fs = fs
        self.limit = limit
        self._handles: dict[int, FileHandle] = {}
        self._headers: dict[int, asyncio.Task[FileHeader | V2FileHeader]] = {}
        self._users: collections.Counter[int] = collections.Counter()
        self._idle: collections.OrderedDict[int, None] = collections.OrderedDict()

    async def acquire(self, file_id: int) -> tuple[FileHandle, FileHeader | V2FileHeader]:
        self._users[file_id] += 1
        self._idle.pop(file_id, None)
        handle = self._handles.get(file_id)
        if handle is None:
            handle = self.fs.open(f"storage/m.{file_id}")
            self._handles[file_id] = handle
            self._headers[file_id] = asyncio.ensure_future(read_file_header(handle))
        try:
            header = await asyncio.shield(self._headers[file_id])
        except BaseException:
            self.release(file_id)
            raise
        return handle, header

    def release(self, file_id: int) -> None:
        self._users[file_id] -= 1
        if self._users[file_id] > 0:
            return
        del self._users[file_id]
        self._idle[file_id] = None
        while len(self._idle) > self.limit:
            old, _ = self._idle.popitem(last=False)
            self._forget(old)

    def _forget(self, file_id: int) -> None:
        task = self._headers.pop(file_id, None)
        if task is not None and not task.done():
            task.cancel()
        handle = self._handles.pop(file_id, None)
        if handle is not None:
            handle.close()

    async def aclose(self) -> None:
        tasks = list(self._headers.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for file_id in list(self._handles):
            self._forget(file_id)


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


class _MailboxImporter:
    """Streams one Dovecot mailbox into one aiodbox mailbox."""

    def __init__(
        self,
        importer: _DovecotImport,
        source: DovecotMailboxDir,
        index: DovecotMailboxIndex,
        name: str,
    ) -> None:
        self.importer = importer
        self.source = source
        self.index = index
        self.name = name
        self.root = importer.root
        self.report = importer.report
        self.files = dict(source.mail_files)

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.root.path).as_posix()

    async def _open_sdbox(self, msg: DovecotMessage) -> _Opened:
        path = self.files.get(msg.uid)
        if path is None:
            return _Opened(msg, None, "its u.N file is missing")
        rel = self._rel(path)
        try:
            dbox = await open_sdbox_message(self.importer.fs, rel)
        except (DboxError, FsError) as e:
            return _Opened(msg, None, _describe(e))
        mtime = None
        if dbox.received is None:
            try:
                mtime = int((await self.importer.fs.stat(rel)).mtime)
            except FsError:
                mtime = None
        return _Opened(msg, dbox, mtime=mtime)

    async def _open_mdbox(self, msg: DovecotMessage) -> _Opened:
        mdbox_map = self.importer.mdbox_map
        entry = None if mdbox_map is None or msg.map_uid is None else mdbox_map.lookup(msg.map_uid)
        if entry is None:
            return _Opened(msg, None, f"map UID {msg.map_uid} is not in the mdbox map")
        files = self.importer.mdbox_files
        assert files is not None
        try:
            handle, header = await files.acquire(entry.file_id)
        except (DboxError, FsError) as e:
            return _Opened(msg, None, f"{entry.file_name}: {_describe(e)}")
        try:
            dbox = await open_mdbox_message(handle, entry.offset, header=header)
        except (DboxError, FsError, ValueError) as e:
            files.release(entry.file_id)
            return _Opened(msg, None, f"{entry.file_name} offset {entry.offset}: {_describe(e)}")
        if msg.guid is not None and dbox.guid is not None and msg.guid != dbox.guid:
            files.release(entry.file_id)
            return _Opened(
                msg,
                None,
                f"{entry.file_name} offset {entry.offset} holds GUID {dbox.guid}, "
                f"the index says {msg.guid}",
            )
        return _Opened(msg, dbox, file_id=entry.file_id)

    async def _done_with(self, opened: _Opened) -> None:
        if opened.dbox is None:
            return
        await opened.dbox.aclose()
        if opened.file_id is not None and self.importer.mdbox_files is not None:
            self.importer.mdbox_files.release(opened.file_id)

    def _incoming(self, opened: _Opened) -> Incoming:
        msg, dbox = opened.message, opened.dbox
        assert dbox is not None
        date = dbox.received
        if date is None:
            date = msg.save_date if msg.save_date is not None else opened.mtime
            self.report.warnings.append(
                f"{self.name} UID {msg.uid}: no received date in the dbox record; "
                "INTERNALDATE taken from the save date or file time"
            )
        return Incoming(
            body=_source_body(dbox.open_body(), f"{self.name} UID {msg.uid} ({dbox.path})"),
            flags=flags_to_bits(system_flag_names(msg.flags)),
            keywords=msg.keywords,
            internal_date=date,
            guid=dbox.guid or msg.guid,
            uid=msg.uid,
            size_hint=dbox.imap_size,
        )

    async def run(self, user: User) -> MailboxResult:
        ix = self.index
        listed = self.importer.listed.get(self.source.name)
        guid = ix.mailbox_guid or (listed.guid if listed else None)
        uidvalidity = ix.uidvalidity or (listed.uid_validity if listed else None)
        prepared = await prepare_mailbox(
            user, self.name, guid=guid, uidvalidity=uidvalidity, keep_uids=True
        )
        result = MailboxResult(self.name, prepared.mode, uidvalidity=prepared.info.uidvalidity)
        todo = [m for m in ix.messages if m.uid >= prepared.info.uidnext]
        result.skipped = len(ix.messages) - len(todo)
        opener = self._open_mdbox if self.root.storage == "mdbox" else self._open_sdbox
        jobs = [_job(opener, m) for m in todo]
        progress = self.importer.progress(self.name, len(todo))
        mbox = await user.open_mailbox(self.name)
        try:
            async with (
                BatchSaver(mbox, batch=self.importer.batch, progress=progress) as saver,
                contextlib.aclosing(
                    ordered_prefetch(jobs, self.importer.prefetch, discard=self._done_with)
                ) as opened_messages,
            ):
                async for opened in opened_messages:
                    if opened.dbox is None:
                        result.failed += 1
                        self.report.problems.append(
                            f"{self.name} UID {opened.message.uid}: not imported: {opened.error}"
                        )
                        continue
                    try:
                        await saver.add(self._incoming(opened))
                    finally:
                        await self._done_with(opened)
            result.imported = saver.saved
        finally:
            progress.close()
            await mbox.close()
        info = await user.raise_counters(
            self.name, uidnext=ix.uidnext, highestmodseq=ix.highest_modseq
        )
        result.uidvalidity = info.uidvalidity
        return result


async def _source_body(stream: BodyStream, where: str) -> AsyncIterator[bytes]:
    """``stream``'s chunks; a read failure becomes :class:`SourceReadError` (it is not
    the target storage failing)."""
    try:
        async for chunk in stream:
            yield chunk
    except (FsError, DboxError) as e:
        raise SourceReadError(f"{where}: {_describe(e)}") from e


def _job(
    opener: Callable[[DovecotMessage], Awaitable[_Opened]], msg: DovecotMessage
) -> Callable[[], Awaitable[_Opened]]:
    return lambda: opener(msg)


class _DovecotImport:
    """One run of :func:`import_dovecot`."""

    def __init__(
        self,
        root: DovecotRoot,
        *,
        batch: int,
        prefetch: int,
        progress: ProgressFactory,
        io_threads: int,
    ) -> None:
        self.root = root
        self.batch = batch
        self.prefetch = prefetch
        self.progress = progress
        self.report = ImportReport(f"{root.path} (Dovecot {root.storage})")
        self.fs = open_fs("posix", root=str(root.path), io_threads=io_threads)
        self.mdbox_map: MdboxMap | None = None
        self.mdbox_files: _MdboxFiles | None = None
        self.listed: dict[str, MailboxListEntry] = {}

    async def _load_lists(self) -> list[str]:
        root = self.root
        if root.storage == "mdbox":
            self.mdbox_map = await asyncio.to_thread(load_mdbox_map, root)
            self.mdbox_files = _MdboxFiles(self.fs)
        try:
            entries = await asyncio.to_thread(load_mailbox_list, root)
        except (DovecotIndexError, OSError) as e:
            self.report.warnings.append(f"mailbox list index not read: {_describe(e)}")
            entries = ()
        self.listed = {e.name: e for e in entries}
        try:
            return list(await asyncio.to_thread(load_subscriptions, root))
        except (DovecotIndexError, OSError) as e:
            self.report.problems.append(f"subscriptions not read: {_describe(e)}")
            return []

    async def _load_index(
        self, source: DovecotMailboxDir, *, quiet: bool = False
    ) -> DovecotMailboxIndex | None:
        """The replayed index of ``source``, or None (reported unless ``quiet``)."""
        if not source.index.exists:
            if quiet:
                return None
            self.report.problems.append(
                f"{source.name}: not imported: the mailbox has no dovecot.index or "
                "dovecot.index.log (let Dovecot open it once, or run doveadm force-resync)"
            )
            return None
        try:
            index = await asyncio.to_thread(load_mailbox_index, source)
        except (DovecotIndexError, OSError) as e:
            if not quiet:
                self.report.problems.append(f"{source.name}: not imported: {_describe(e)}")
            return None
        if quiet:
            return index
        if index.deleted:
            self.report.warnings.append(f"{source.name}: skipped: Dovecot was deleting it")
            return None
        self.report.warnings.extend(f"{source.name}: {w}" for w in index.warnings)
        return index

    async def _plan(self, user: User) -> list[tuple[DovecotMailboxDir, str]]:
        """Map source mailboxes to names; refuse before any write if one is taken.

        Only the indexes of target mailboxes that already hold mail are read here (to
        tell an interrupted earlier import from a conflict); the others are read when
        their mailbox is imported, so that at most one index is in memory at a time.
        """
        plan: list[tuple[DovecotMailboxDir, str]] = []
        conflicts: list[str] = []
        for source in self.root.mailboxes:
            try:
                name = names.normalize(source.name)
            except InvalidMailboxName as e:
                self.report.problems.append(f"{source.name!r}: not imported: {e}")
                continue
            plan.append((source, name))
            try:
                existing = await user.get_mailbox_info(name)
            except MailboxNotFound:
                continue
            status = await user.status(name)
            if not status.messages:
                continue
            index = await self._load_index(source, quiet=True)
            same = index is not None and (
                existing.uidvalidity == index.uidvalidity
                and index.mailbox_guid in (None, existing.guid)
            )
            if not same:
                theirs = f", Dovecot's {index.uidvalidity}" if index is not None else ""
                conflicts.append(
                    f"{name!r} holds {status.messages} message(s) and is not this Dovecot "
                    f"mailbox (UIDVALIDITY {existing.uidvalidity}{theirs})"
                )
        if conflicts:
            raise ImportConflict(
                f"user {user.name!r} already has mail: {'; '.join(conflicts)}; refusing to "
                "merge (nothing was imported): import into a new user, or delete or rename "
                "those mailboxes first"
            )
        return plan

    async def run(self, user: User) -> ImportReport:
        try:
            subscriptions = await self._load_lists()
            plan = await self._plan(user)
            for source, name in plan:
                index = await self._load_index(source)
                if index is None:
                    continue
                result = await _MailboxImporter(self, source, index, name).run(user)
                self.report.mailboxes.append(result)
            for sub in subscriptions:
                try:
                    await user.subscribe(sub)
                except InvalidMailboxName as e:
                    self.report.problems.append(f"subscription {sub!r} not kept: {e}")
                    continue
                self.report.subscribed += 1
        finally:
            if self.mdbox_files is not None:
                await self.mdbox_files.aclose()
            await self.fs.aclose()
        return self.report


async def import_dovecot(
    storage: Storage,
    user_name: str,
    path: str | os.PathLike[str] | DovecotRoot,
    *,
    batch: int = DEFAULT_BATCH,
    prefetch: int | None = None,
    progress: ProgressFactory = no_progress,
) -> ImportReport:
    """Import every mailbox of a Dovecot 2.3 sdbox/mdbox mail root (module docstring).

    Args:
        storage: The aiodbox storage to import into.
        user_name: The aiodbox user (created with the default mailboxes if new).
        path: The Dovecot mail root (``~/sdbox``, ``~/mdbox`` ...), a home directory
            holding one, or what :func:`scan_source` returned.
        batch: Messages per transaction.
        prefetch: Source messages opened ahead (default: the storage's ``prefetch``).
        progress: Progress display factory, called once per mailbox.

    Returns:
        What was imported; ``problems`` lists what could not be.

    Raises:
        DovecotLayoutError: ``path`` is not a Dovecot mail root (nothing written).
        DovecotIndexError: the mdbox map is damaged (nothing written).
        ImportConflict: a target mailbox holds other mail (nothing written).
        StorageError, FsError: the aiodbox storage failed; batches committed so far stay,
            and a rerun resumes after them.
    """
    root = path if isinstance(path, DovecotRoot) else await scan_source(path)
    run = _DovecotImport(
        root,
        batch=batch,
        prefetch=prefetch or storage.config.prefetch,
        progress=progress,
        io_threads=min(storage.config.io_threads, 4),
    )
    user = await storage.user(user_name)
    return await run.run(user)
