"""Writing dbox v3 files over the FS API: new sdbox files and appends to mdbox files.

Theory of operation
-------------------
The codec's :class:`~aiodbox.dbox.codec.RecordWriter` turns body chunks into the bytes to
append without knowing the size first; an :class:`~aiodbox.streams.output.OutputStream`
hands them to the handle. A body chunk is fed to the record writer only for the bytes the
handle accepted, so ``Z`` and ``H`` always describe exactly what was written, also when
the handle's buffer is full and accepts part of a chunk (back-pressure: ``write_nowait``
raises ``BlockingIOError`` and the writable callback fires when it drained).

Nothing becomes visible before a commit, which the FS makes atomic:

- sdbox: ``fs.create(<dir>/u.new.<random>, FAIL_IF_EXISTS)``; the file header and the
  record start are written at once, the body as it comes, the trailer at ``finish``,
  which commits under the final name (``commit(final_name)``). A taken name raises
  ``FsExists`` and leaves the writer ready for ``finish`` with another name.
- mdbox: an :class:`MdboxFile` (a new file from ``create``, or an existing v3 file opened
  for APPEND) takes records one after the other (:class:`RecordAppender`); one
  ``commit`` makes all of them visible. The caller holds the file's lock (``try_lock``)
  from before the first append until the commit or rollback, so the offsets reported for
  the records are where they land.

The size learned when an existing file was opened may be stale by the time the lock is
taken (another process may have appended in between). ``try_lock`` is synchronous, so it
only marks the size stale; the record offsets are kept relative to the committed end,
and the first awaited step under the lock (a record's ``finish`` or the ``commit``)
re-reads the committed size with ``stat`` before any absolute offset is reported.

Bytes that must precede the next record but are not in the handle yet (the header of a
new mdbox file, also after a rollback) are kept as a backlog and written before the
record start.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from aiodbox.dbox.codec import FileHeader, Metadata, RecordWriter, encode_file_header, new_separator
from aiodbox.dbox.file_read import DboxReadOnlyError, read_file_header
from aiodbox.dbox.format import RECORD_START
from aiodbox.dbox.v2 import V2FileHeader
from aiodbox.fs import paths
from aiodbox.fs.api import FS, CreateMode, FileHandle, FsProperty, OpenMode, Perms
from aiodbox.fs.errors import FsNotSupported
from aiodbox.random_ids import random_hex
from aiodbox.streams.output import OutputStream


@dataclass(frozen=True, slots=True)
class DboxWritten:
    """A committed sdbox file.

    Attributes:
        path: The file's FS path (the final name).
        stored_size: Body bytes (``Z``; also the IMAP size, v3 stores what it got).
        digest: ``H``: BLAKE2b-256 hex of the body.
        metadata: All metadata written.
    """

    path: str
    stored_size: int
    digest: str | None
    metadata: Metadata


class AppendedRecord(NamedTuple):
    """A record appended to an mdbox file (its place once the file is committed).

    Attributes:
        offset: Where the record starts (its ``01 02 LF``): the map's offset.
        body_size: Body bytes (``Z``): the map's size.
        metadata: All metadata written.
    """

    offset: int
    body_size: int
    metadata: Metadata


class _RecordStream:
    """Streams one record's body into a handle (shared by sdbox and mdbox writers)."""

    def __init__(self, out: OutputStream, writer: RecordWriter, prefix: bytes) -> None:
        self._out = out
        self._writer = writer
        self._prefix = prefix  # bytes to write before the body (headers, record start)
        self._state = "body"  # body -> trailer (written) -> done; or failed

    @property
    def body_size(self) -> int:
        """Body bytes accepted so far."""
        return self._writer.size

    def _grew(self, n: int) -> None:
        """``n`` body or trailer bytes were accepted by the handle."""

    def _check_body(self) -> None:
        if self._state != "body":
            raise RuntimeError(f"the record is {self._state}: no more body bytes")

    def write_nowait(self, chunk: bytes | bytearray | memoryview) -> int:
        """Append body bytes without waiting; return how many were accepted.

        Only accepted bytes become part of the body. Nothing is visible before the
        commit.

        Raises:
            BlockingIOError: the handle's buffer is full; the writable callback fires
                (and :meth:`drain` returns) when it drained.
            RuntimeError: the record was already finished, aborted or failed.
            FsError: the open or a background write failed.
        """
        self._check_body()
        if self._prefix:
            n = self._out.write(self._prefix)
            self._prefix = self._prefix[n:]
            if self._prefix:
                raise BlockingIOError(errno.EAGAIN, "write buffer full")
        if not chunk:
            return 0
        n = self._out.write(chunk)
        if n:
            self._writer.feed(chunk[:n])
            self._grew(n)
        return n

    async def write(self, chunk: bytes | bytearray | memoryview) -> None:
        """Await until all of ``chunk`` was appended to the body (same errors)."""
        view = memoryview(chunk)
        while True:
            try:
                n = self.write_nowait(view)
            except BlockingIOError:
                await self._out.drain()
                continue
            view = view[n:]
            if not view:
                return

    def set_writable_callback(self, cb: Callable[[], None] | None) -> None:
        """Call ``cb`` on the loop when :meth:`write_nowait` may accept bytes again."""
        self._out.set_flush_callback(cb)

    async def drain(self) -> None:
        """Await buffer space after ``write_nowait`` raised ``BlockingIOError``."""
        await self._out.drain()

    async def _write_trailer(self) -> None:
        self._check_body()
        self._state = "failed"  # until the whole trailer is in
        if self._prefix:
            await self._out.write_all(self._prefix)
            self._prefix = b""
        trailer = self._writer.finish()
        await self._out.write_all(trailer)
        self._grew(len(trailer))
        self._state = "trailer"


# ---------------------------------------------------------------------------------- sdbox


class SdboxWriter(_RecordStream):
    """A new sdbox file being written; see :func:`create_sdbox`.

    Use ``async with`` or call :meth:`abort` on failure: a writer that is neither
    finished nor aborted keeps its handle (and its temp file) until the FS is closed.
    """

    def __init__(
        self, handle: FileHandle, directory: str, writer: RecordWriter, prefix: bytes
    ) -> None:
        super().__init__(OutputStream(handle), writer, prefix)
        self.handle = handle
        self._directory = directory

    async def finish(self, final_name: str) -> DboxWritten:
        """Write the trailer and commit the file under ``final_name`` (in its directory).

        The file appears, complete, when this returns (fsync per the FS's policy first);
        the handle is then closed (its descriptor is released in the background).

        Raises:
            FsExists: ``final_name`` is taken; nothing became visible, and the writer
                stays ready: call ``finish`` again with another name, or :meth:`abort`.
            FsError: writing or committing failed; nothing became visible.
            RuntimeError: the writer was already finished or aborted.
        """
        if self._state == "body":
            await self._write_trailer()
        elif self._state != "trailer":
            raise RuntimeError(f"the sdbox writer is {self._state}")
        await self._out.finish(final_name)
        self._state = "done"
        # The file is committed: closing only releases the descriptor, which need not
        # be waited for (one hand-off less per saved message).
        self.handle.close()
        metadata = self._writer.metadata
        return DboxWritten(
            path=paths.join(self._directory, final_name),
            stored_size=metadata.size,
            digest=metadata.digest,
            metadata=metadata,
        )

    async def abort(self) -> None:
        """Discard the file: no file and no temp file remain when this returns.

        Does nothing after a successful :meth:`finish`.
        """
        if self._state != "done":
            self._state = "aborted"
            await self.handle.aclose()

    async def __aenter__(self) -> SdboxWriter:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.abort()


def _sdbox_start(ctime: int | None, **metadata: Any) -> tuple[RecordWriter, bytes]:
    """A new sdbox file's record writer (fresh separator) and its first bytes: the file
    header (created ``ctime``, default now) and the record start."""
    sep = new_separator()
    writer = RecordWriter(sep, **metadata)
    header = encode_file_header(sep, int(time.time()) if ctime is None else ctime)
    return writer, header + writer.begin()


async def create_sdbox(
    fs: FS,
    directory: str,
    *,
    guid: str,
    received: int | None,
    perms: Perms | None = None,
    orig_mailbox: str | None = None,
    pop3_uidl: str | None = None,
    pop3_order: int | None = None,
    extra: Sequence[tuple[str, str]] = (),
    ctime: int | None = None,
) -> SdboxWriter:
    """Start a new v3 sdbox file in ``directory``; stream the body, then ``finish(name)``.

    The file header and the record start are written at once. Nothing is visible under
    any name before :meth:`SdboxWriter.finish` commits; open errors (a directory that
    cannot be created, no permission) surface on a write or at ``finish``.

    Args:
        fs: The FS.
        directory: The mailbox's ``dbox-Mails`` directory (created at commit if missing).
        guid: Message GUID, 32 lowercase hex characters.
        received: Received time (UNIX seconds) for ``R``, or None.
        perms: File mode and group for the new file.
        orig_mailbox: ``B``; pop3_uidl: ``P``; pop3_order: ``O``.
        extra: Unknown ``(key, value)`` metadata to keep (from a copied record).
        ctime: The file header's creation time; default now.

    Returns:
        The writer.

    Raises:
        ValueError: a metadata value cannot be written (bad GUID, LF in a value ...).
        FsError: the handle already failed.
    """
    writer, head = _sdbox_start(
        ctime,
        guid=guid,
        received=received,
        orig_mailbox=orig_mailbox,
        pop3_uidl=pop3_uidl,
        pop3_order=pop3_order,
        extra=extra,
    )
    directory = paths.normalize("create", directory, allow_root=True)
    handle = fs.create(
        paths.join(directory, f"u.new.{random_hex(6)}"), CreateMode.FAIL_IF_EXISTS, perms
    )
    sdbox = SdboxWriter(handle, directory, writer, head)
    try:
        await sdbox.write(b"")  # the header and record start
    except BaseException:
        await handle.aclose()
        raise
    return sdbox


class SdboxInMemory:
    """A new v3 sdbox file built in memory, for a message small enough that a handle
    would hold it in its write buffer until the commit anyway: :meth:`finish` returns the
    whole file, which the caller writes with one ``FS.write_file`` under its final name
    (one hand-off to the FS where a streamed file takes three: create, commit, close).
    Nothing is written anywhere before that.
    """

    def __init__(self, *, guid: str, received: int | None, ctime: int | None = None) -> None:
        """Raises ``ValueError`` for a bad GUID (as :func:`create_sdbox`)."""
        self._writer, self._head = _sdbox_start(ctime, guid=guid, received=received)
        self._body: list[bytes] = []
        self.body_size = 0

    def write(self, chunk: bytes | bytearray | memoryview) -> None:
        """Append body bytes."""
        data = self._writer.feed(chunk)
        self._body.append(data)
        self.body_size += len(data)

    def body(self) -> list[bytes]:
        """The body chunks written so far (to stream them elsewhere instead)."""
        return list(self._body)

    def finish(self) -> bytes:
        """The whole file: header, record, trailer (call once)."""
        return b"".join([self._head, *self._body, self._writer.finish()])

    @property
    def metadata(self) -> Metadata:
        """The record's metadata (after :meth:`finish`)."""
        return self._writer.metadata


# ---------------------------------------------------------------------------------- mdbox


class RecordAppender(_RecordStream):
    """One record being appended to an :class:`MdboxFile`; see :meth:`MdboxFile.append`."""

    def __init__(
        self, file: MdboxFile, out: OutputStream, writer: RecordWriter, prefix: bytes, rel: int
    ) -> None:
        super().__init__(out, writer, prefix)
        self._file = file
        self._rel = rel  # record start, counted from the committed end of the file

    def _grew(self, n: int) -> None:
        self._file._size += n

    async def finish(self) -> AppendedRecord:
        """Write the trailer; the record is complete (visible at the file's commit).

        The first ``finish`` after the lock was taken on an existing file re-reads the
        committed size (``stat``), so the offset returned is where the record lands.

        Returns:
            Where the record is and what was written.

        Raises:
            FsNotFound: the file was deleted (purged) since it was opened.
            FsError: a write or the ``stat`` failed; after a failed write the record is
                broken: roll the file back.
            RuntimeError: the record was already finished or aborted.
        """
        self._check_body()
        await self._file._refresh_size()
        await self._write_trailer()
        self._state = "done"
        self._file._active = None
        metadata = self._writer.metadata
        return AppendedRecord(self._file.committed_size + self._rel, metadata.size, metadata)

    def abort(self) -> None:
        """Drop this record: rolls back the file, i.e. **every** record since its last commit.

        A record cannot be removed alone once some of its bytes are in the handle.
        """
        if self._state not in ("done", "aborted"):
            self._file.rollback()


class MdboxFile:
    """A v3 mdbox file that records are appended to; see :func:`create_mdbox_file`.

    Locking: the caller holds the file's lock (:meth:`try_lock`) while appending and until
    :meth:`commit` or :meth:`rollback` returns; :meth:`append` refuses to start without
    it. Other processes take the same lock before appending, so the offsets this file
    reports are where the records land.

    Attributes:
        handle: The handle; committed records can be read through it
            (:func:`~aiodbox.dbox.file_read.open_mdbox_message` with ``header=``).
        header: The file header (its separator goes into every record).
    """

    def __init__(
        self,
        fs: FS,
        handle: FileHandle,
        header: FileHeader,
        *,
        committed: int,
        header_bytes: bytes | None,
    ) -> None:
        self._fs = fs
        self.handle = handle
        self.header = header
        self._out = OutputStream(handle)
        self._header_bytes = header_bytes  # set while the file was never committed
        self._backlog = header_bytes or b""
        self._committed = committed
        self._size = committed + len(self._backlog)
        self._locked = False
        self._size_stale = False  # locked, but the committed size not re-read since
        self._active: RecordAppender | None = None

    @property
    def path(self) -> str:
        """The file's FS path (a created file's final path once committed)."""
        return self.handle.path

    @property
    def size(self) -> int:
        """Where the next record will start: the committed size plus what was appended since.

        Use it for rotation (``size + message_size + 512 <= rotate_size``; it already
        counts the records appended since the last commit). Before the lock is held it
        comes from the ``stat`` at open; under the lock it is exact once a record's
        ``finish`` or a ``commit`` has run.
        """
        return self._size

    @property
    def committed_size(self) -> int:
        """The size as of the last commit (0 for a created file never committed)."""
        return self._committed

    @property
    def locked(self) -> bool:
        """True while this file holds its lock."""
        return self._locked

    def try_lock(self) -> bool:
        """Take the file's exclusive lock without waiting for other holders (synchronous).

        For an existing file, the committed size is re-read (``stat``) at the next
        awaited step, a record's ``finish`` or the ``commit``, since another process may
        have appended before the lock was taken; offsets are reported only after that.

        Returns:
            True if this file now holds the lock, False if someone else holds it.

        Raises:
            FsNotSupported: the backend has no locks (mdbox needs ``FsProperty.LOCKS``).
            FsError: the open failed.
        """
        if self._locked:
            return True
        if not self.handle.try_lock():
            return False
        self._locked = True
        self._size_stale = self._header_bytes is None  # others could see it: re-read
        return True

    def set_locked_size(self, size: int) -> None:
        """The committed size, as the caller read it (``stat``) after taking the lock: the
        re-read that :meth:`try_lock` asks for is then not needed."""
        if not self._locked:
            raise RuntimeError(f"{self.path}: the size can only be set under the lock")
        self._size += size - self._committed
        self._committed = size
        self._size_stale = False

    async def _refresh_size(self) -> None:
        """Re-read the committed size after the lock was taken (once per lock)."""
        if not self._size_stale:
            return
        size = (await self._fs.stat(self.path)).size
        self._size += size - self._committed
        self._committed = size
        self._size_stale = False

    def unlock(self) -> None:
        """Drop the lock (:meth:`aclose` drops it too). Commit or roll back first."""
        self.handle.unlock()
        self._locked = False
        self._size_stale = False

    def append(
        self,
        *,
        guid: str,
        received: int | None = None,
        orig_mailbox: str | None = None,
        pop3_uidl: str | None = None,
        pop3_order: int | None = None,
        extra: Sequence[tuple[str, str]] = (),
    ) -> RecordAppender:
        """Start appending a record at :attr:`size`; stream its body, then ``finish()``.

        One record at a time; several records may be appended before one :meth:`commit`.
        Nothing is visible before the commit.

        Raises:
            RuntimeError: the lock is not held, or another record is unfinished.
            ValueError: a metadata value cannot be written.
        """
        if not self._locked:
            raise RuntimeError(f"{self.path}: take the lock with try_lock() before appending")
        if self._active is not None:
            raise RuntimeError(f"{self.path}: finish the record being appended first")
        writer = RecordWriter(
            self.header.sep,
            guid=guid,
            received=received,
            orig_mailbox=orig_mailbox,
            pop3_uidl=pop3_uidl,
            pop3_order=pop3_order,
            extra=extra,
        )
        prefix = self._backlog + writer.begin()
        self._backlog = b""
        appender = RecordAppender(self, self._out, writer, prefix, self._size - self._committed)
        self._size += len(RECORD_START)
        self._active = appender
        return appender

    async def commit(self, filename: str | None = None) -> None:
        """Make every record appended since the last commit visible, atomically.

        Args:
            filename: For a created file's first commit: its final name (``m.<id>``) in
                the directory given at create; None keeps that name. Not allowed later.

        Raises:
            RuntimeError: a record is unfinished (finish it, or roll back).
            FsNotFound: the file was deleted (purged) since it was opened.
            FsExists: first commit of a created file, and the name is taken; nothing
                became visible; commit again with another name, or roll back.
            FsError: the commit failed; nothing became visible.
        """
        if self._active is not None:
            raise RuntimeError(f"{self.path}: a record is unfinished; finish it or roll back")
        await self._refresh_size()
        if self._backlog:
            await self._out.write_all(self._backlog)
            self._backlog = b""
        await self._out.finish(filename)
        self._committed = self._size
        self._header_bytes = None

    def rollback(self) -> None:
        """Discard every record appended since the last commit (an unfinished one too).

        Raises:
            FsError: a commit is in progress.
        """
        if self._active is not None:
            self._active._state = "aborted"
            self._active = None
        self.handle.rollback()
        self._backlog = self._header_bytes or b""
        self._size = self._committed + len(self._backlog)

    def close(self) -> None:
        """:meth:`aclose` without waiting for the handle's background clean-up (the lock
        is dropped at once)."""
        if self._active is not None:
            self._active._state = "aborted"
            self._active = None
        if self._locked:
            self.unlock()
        self.handle.close()

    async def aclose(self) -> None:
        """Close the handle: uncommitted records are discarded and the lock is dropped.

        A created file that was never committed leaves nothing behind.
        """
        if self._active is not None:
            self._active._state = "aborted"
            self._active = None
        self._locked = False
        await self.handle.aclose()

    async def __aenter__(self) -> MdboxFile:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


async def create_mdbox_file(
    fs: FS, path: str, *, perms: Perms | None = None, ctime: int | None = None
) -> MdboxFile:
    """Create a new, empty v3 mdbox file; it appears at its first :meth:`MdboxFile.commit`.

    Waits for the create to finish, so that errors surface here and
    :meth:`MdboxFile.try_lock` can answer. The caller locks it before appending, as for
    any mdbox file.

    Args:
        fs: The FS (needs ``FsProperty.LOCKS`` for the lock).
        path: A path in the storage directory; the first commit may rename it
            (``commit("m.<file_id>")``).
        perms: File mode and group.
        ctime: The header's creation time; default now.

    Raises:
        FsNotSupported: the backend cannot append (no ``FsProperty.APPEND``).
        FsError: the create failed.
    """
    if FsProperty.APPEND not in fs.properties:
        raise FsNotSupported("create", path, errno.ENOTSUP, "mdbox needs a backend with APPEND")
    sep = new_separator()
    created = int(time.time()) if ctime is None else ctime
    header_bytes = encode_file_header(sep, created)
    header = FileHeader(sep=sep, ctime=created, length=len(header_bytes))
    handle = fs.create(path, CreateMode.FAIL_IF_EXISTS, perms)
    try:
        await handle.wait_open()
    except BaseException:
        await handle.aclose()
        raise
    return MdboxFile(fs, handle, header, committed=0, header_bytes=header_bytes)


async def open_mdbox_file(fs: FS, path: str) -> MdboxFile:
    """Open an existing v3 mdbox file for appending (lock it before appending).

    Returns:
        The file, with :attr:`MdboxFile.size` as the open found it (read again under the
        lock).

    Raises:
        DboxReadOnlyError: a Dovecot v2 file: aiodbox reads those but never appends.
        DboxCorruptedError: the file header is damaged.
        FsNotSupported: the backend cannot append (no ``FsProperty.APPEND``).
        FsError: the open, stat or read failed.
    """
    if FsProperty.APPEND not in fs.properties:
        raise FsNotSupported("open", path, errno.ENOTSUP, "mdbox needs a backend with APPEND")
    handle = fs.open(path, OpenMode.APPEND)
    try:
        header = await read_file_header(handle)
        if isinstance(header, V2FileHeader):
            raise DboxReadOnlyError(
                f"{path}: a Dovecot 2.3 (v2) file: aiodbox reads it but never appends to it"
            )
        size = handle.size  # what the open learnt; a stat only where it does not tell
        if size is None:
            size = (await fs.stat(path)).size
    except BaseException:
        await handle.aclose()
        raise
    return MdboxFile(fs, handle, header, committed=size, header_bytes=None)
