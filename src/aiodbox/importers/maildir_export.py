"""Export a user's mail to a Maildir++ tree (``aiodbox export maildir``).

Theory of operation
===================

Every mailbox goes to a Maildir++ tree: INBOX is the root, ``A/B`` is ``.A.B`` (modified
UTF-7 levels, a ``.`` in a level written ``%2E``), each subfolder with a
``maildirfolder`` file.  A message is
``cur/<INTERNALDATE>.<UIDVALIDITY>_<UID>.aiodbox,S=<size>,W=<size>:2,<flags>``.

Kept: flags (``D F R S T``), INTERNALDATE as the file's mtime, the bytes exactly as IMAP
serves them (``BODY[]``) with their **CRLF line ends**: byte-exact rather than the LF
most Maildir tools write (Dovecot reads both); keywords as Dovecot's ``dovecot-keywords``
letters (26 per folder at most: more are dropped and reported); UIDs, UIDVALIDITY,
UIDNEXT, the mailbox GUID and message GUIDs in Dovecot's ``dovecot-uidlist``; the
subscriptions in a ``subscriptions`` file at the root (Dovecot's version 2 format).

Lost: HIGHESTMODSEQ and modseqs, special-use attributes, save dates, and the INTERNALDATE
time zone (mtimes are UTC).

Each file is written as ``mailbox.Maildir.add`` does it: a temp file in ``tmp/``, fsync
(unless ``[storage] fsync = "never"``), mtime, link into ``cur/`` (never replacing a
file).  Blocking file work runs in worker threads, one job per message below 1 MiB;
bodies are streamed from storage, opened ``prefetch`` messages ahead.

:mod:`aiodbox.importers.maildir_mbox` reads all of it back: an export followed by an
import into a new user is lossless for everything listed above as kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from aiodbox.dbox.file import DboxError
from aiodbox.importers.maildir_mbox import (
    KEYWORD_LETTERS,
    KEYWORDS_FILE,
    SUBSCRIPTIONS_FILE,
    UIDLIST_FILE,
    SourceLayoutError,
    maildir_info,
    mutf7_encode,
    name_to_maildir_folder,
)
from aiodbox.importers.target import ProgressFactory, ProgressSink, no_progress, ordered_prefetch
from aiodbox.storage import names
from aiodbox.storage.errors import StorageError

if TYPE_CHECKING:
    from aiodbox.dbox.file import DboxMessage
    from aiodbox.storage.mailbox import Mailbox, MailRecord
    from aiodbox.storage.storage import MailboxInfo, Storage

__all__ = ["ExportReport", "export_maildir"]


@dataclass
class ExportReport:
    """What :func:`export_maildir` wrote.

    Attributes:
        path: The Maildir++ root.
        mailboxes: ``(name, folder directory, messages)`` per mailbox.
        problems: Messages that could not be read from storage.
        warnings: What the Maildir could not hold (keywords beyond 26 per folder ...).
    """

    path: Path
    mailboxes: list[tuple[str, str, int]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def exported(self) -> int:
        """Messages written."""
        return sum(n for _, _, n in self.mailboxes)


_WRITE_CHUNK = 1 << 20


class _MaildirWriter:
    """Blocking Maildir file writes (each method runs in a worker thread)."""

    def __init__(self, fsync: bool) -> None:
        self.fsync = fsync

    def make_folder(self, path: Path, sub: bool) -> None:
        for d in ("cur", "new", "tmp"):
            (path / d).mkdir(mode=0o700, parents=True, exist_ok=True)
        if sub:
            (path / "maildirfolder").touch(mode=0o600)

    def begin(self, folder: Path, base: str) -> tuple[int, str]:
        tmp = str(folder / "tmp" / base)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        return fd, tmp

    def write(self, fd: int, chunks: list[bytes]) -> None:
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]

    def finish(self, fd: int, tmp: str, final: str, mtime: int) -> None:
        try:
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.utime(tmp, (mtime, mtime))
            os.link(tmp, final)  # fails if the name exists: never replace a message
        finally:
            os.unlink(tmp)

    def write_message(
        self, folder: Path, base: str, chunks: list[bytes], final: str, mtime: int
    ) -> None:
        """:meth:`begin`, :meth:`write` and :meth:`finish` in one go (small messages)."""
        fd, tmp = self.begin(folder, base)
        try:
            self.write(fd, chunks)
        except BaseException:
            self.abort(fd, tmp)
            raise
        self.finish(fd, tmp, final, mtime)

    def abort(self, fd: int, tmp: str) -> None:
        with contextlib.suppress(OSError):
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)

    def write_file(self, path: Path, data: bytes) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)

    def sync_dir(self, path: Path) -> None:
        if not self.fsync:
            return
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _prepare_export_root(path: Path) -> None:
    if path.exists():
        if not path.is_dir():
            raise SourceLayoutError(f"{path}: exists and is not a directory")
        if any(path.iterdir()):
            raise SourceLayoutError(f"{path}: exists and is not empty; export into a new path")
    path.mkdir(mode=0o700, parents=True, exist_ok=True)


def _message_base(info: MailboxInfo, rec: MailRecord) -> str:
    return f"{rec.internal_date}.{info.uidvalidity}_{rec.uid}.aiodbox,S={rec.size},W={rec.size}"


class _MailboxExport:
    def __init__(
        self,
        writer: _MaildirWriter,
        report: ExportReport,
        mbox: Mailbox,
        folder: Path,
        prefetch: int,
    ) -> None:
        self.writer = writer
        self.report = report
        self.mbox = mbox
        self.folder = folder
        self.prefetch = prefetch
        self.letters: dict[str, str] = {}
        self.dropped: set[str] = set()
        self.uidlist: list[str] = []

    def _letters(self, keywords: Iterable[str]) -> list[str]:
        out = []
        for kw in keywords:
            letter = self.letters.get(kw)
            if letter is None:
                if len(self.letters) >= len(KEYWORD_LETTERS):
                    self.dropped.add(kw)
                    continue
                letter = KEYWORD_LETTERS[len(self.letters)]
                self.letters[kw] = letter
            out.append(letter)
        return out

    async def _write_message(self, rec: MailRecord, msg: DboxMessage) -> None:
        """Stream one message into ``tmp/`` and link it into ``cur/``.

        A message smaller than ``_WRITE_CHUNK`` costs one worker-thread job (create,
        write, fsync, mtime, link); a bigger one is written in ``_WRITE_CHUNK`` pieces.
        """
        info = self.mbox.info
        base = _message_base(info, rec)
        final = str(
            self.folder / "cur" / f"{base}:{maildir_info(rec.flags, self._letters(rec.keywords))}"
        )
        writer = self.writer
        opened: tuple[int, str] | None = None
        pending: list[bytes] = []
        size = 0
        try:
            async for chunk in msg.open_body():
                pending.append(chunk)
                size += len(chunk)
                if size >= _WRITE_CHUNK:
                    if opened is None:
                        opened = await asyncio.to_thread(writer.begin, self.folder, base)
                    await asyncio.to_thread(writer.write, opened[0], pending)
                    pending, size = [], 0
        except BaseException:
            if opened is not None:
                await asyncio.to_thread(writer.abort, *opened)
            raise
        if opened is None:
            await asyncio.to_thread(
                writer.write_message, self.folder, base, pending, final, rec.internal_date
            )
        else:
            await asyncio.to_thread(writer.write, opened[0], pending)
            await asyncio.to_thread(writer.finish, *opened, final, rec.internal_date)
        self.uidlist.append(f"{rec.uid} G{rec.guid} W{rec.size} :{base}")

    async def run(self, progress: ProgressSink) -> int:
        await self.mbox.sync()
        uids = list(self.mbox.view.uids)
        written = 0
        for start in range(0, len(uids), 500):
            records = await self.mbox.records(uids[start : start + 500])

            async def open_one(rec: MailRecord) -> tuple[MailRecord, DboxMessage | str]:
                try:
                    return rec, await self.mbox.open_message(rec)
                except (StorageError, OSError, DboxError) as e:
                    return rec, str(e) or type(e).__name__

            async def discard(item: tuple[MailRecord, DboxMessage | str]) -> None:
                if not isinstance(item[1], str):
                    await item[1].aclose()

            jobs = [(lambda rec=rec: open_one(rec)) for rec in records]
            async with contextlib.aclosing(
                ordered_prefetch(jobs, self.prefetch, discard=discard)
            ) as opened:
                async for rec, msg in opened:
                    if isinstance(msg, str):
                        self.report.problems.append(
                            f"{self.mbox.name} UID {rec.uid}: not exported: {msg}"
                        )
                        continue
                    try:
                        await self._write_message(rec, msg)
                    except DboxError as e:  # a damaged record: fsck's business, not ours
                        self.report.problems.append(
                            f"{self.mbox.name} UID {rec.uid}: not exported: {e}"
                        )
                        continue
                    finally:
                        await msg.aclose()
                    written += 1
                    progress.step()
        await self._write_control_files()
        return written

    async def _write_control_files(self) -> None:
        info = self.mbox.info
        status = await self.mbox.user.status(info.name)
        header = f"3 V{info.uidvalidity} N{status.uidnext} G{info.guid}\n"
        body = "".join(line + "\n" for line in self.uidlist)
        await asyncio.to_thread(
            self.writer.write_file, self.folder / UIDLIST_FILE, (header + body).encode()
        )
        if self.letters:
            text = "".join(f"{i} {kw}\n" for i, kw in enumerate(self.letters))
            await asyncio.to_thread(
                self.writer.write_file, self.folder / KEYWORDS_FILE, text.encode()
            )
        if self.dropped:
            self.report.warnings.append(
                f"{info.name}: keywords {', '.join(sorted(self.dropped))} not exported "
                "(a Maildir folder holds 26 keywords at most)"
            )
        await asyncio.to_thread(self.writer.sync_dir, self.folder / "cur")


def _subscriptions_file(subscribed: Iterable[str]) -> bytes:
    lines = [
        "\t".join(mutf7_encode(level) for level in name.split(names.SEPARATOR))
        for name in subscribed
    ]
    return ("V\t2\n\n" + "".join(line + "\n" for line in lines)).encode("utf-8")


async def export_maildir(
    storage: Storage,
    user_name: str,
    path: str | os.PathLike[str],
    *,
    progress: ProgressFactory = no_progress,
) -> ExportReport:
    """Write every mailbox of ``user_name`` to a new Maildir++ tree (module docstring).

    Args:
        storage: The aiodbox storage.
        user_name: The user (the caller checks that it has a mail store: its index
            would be created empty otherwise).
        path: The Maildir++ root to create (it must not exist, or be empty).
        progress: Progress display factory, called once per mailbox.

    Raises:
        SourceLayoutError: ``path`` exists and is not an empty directory.
        StorageError, FsError: storage failed.
        OSError: writing the Maildir failed.
    """
    root = Path(path)
    await asyncio.to_thread(_prepare_export_root, root)
    writer = _MaildirWriter(fsync=storage.config.fsync != "never")
    report = ExportReport(root)
    user = await storage.user(user_name, create=False)
    mailboxes = sorted(await user.list_mailboxes(), key=lambda m: (m.name != names.INBOX, m.name))
    for info in mailboxes:
        is_inbox = info.name == names.INBOX
        folder_name = "" if is_inbox else "." + name_to_maildir_folder(info.name)
        folder = root / folder_name if folder_name else root
        await asyncio.to_thread(writer.make_folder, folder, not is_inbox)
        mbox = await user.open_mailbox(info.name)
        sink = progress(info.name, len(mbox.view))
        try:
            n = await _MailboxExport(writer, report, mbox, folder, storage.config.prefetch).run(
                sink
            )
        finally:
            sink.close()
            await mbox.close()
        report.mailboxes.append((info.name, folder_name or ".", n))
    await asyncio.to_thread(
        writer.write_file,
        root / SUBSCRIPTIONS_FILE,
        _subscriptions_file(await user.subscriptions()),
    )
    await asyncio.to_thread(writer.sync_dir, root)
    return report
