"""The FS API: the contract every storage backend implements (DESIGN.md §3).

Theory of operation
-------------------
The API follows Dovecot's 2010 design.  ``FS.open`` and ``FS.create`` never fail and never
block: they return a :class:`FileHandle` at once and start the open in the background.
Everything on a handle is **non-blocking**:

* ``pread`` returns bytes that are already buffered, or raises ``BlockingIOError`` after
  starting a background read; the input callback fires when data arrived.
* ``write`` appends to a bounded write buffer and returns how many bytes it accepted, or
  raises ``BlockingIOError`` when the buffer is full; the output callback fires when it
  drained.  Writes are append-only and **invisible until commit**.
* ``commit`` makes all writes visible atomically.  It raises ``BlockingIOError`` while in
  progress; the output callback fires when it finished and the next ``commit`` call with
  the same arguments returns (or raises the commit's error).
* An open that failed (ENOENT, EACCES, ...) surfaces on the first ``pread``/``write``/
  ``commit``, or through the open-finished callback.

The awaitable conveniences (``wait_open``, ``read``, ``write_all``, ``acommit``, ``aclose``,
``async with``) are written once here, on top of the non-blocking calls and the callbacks;
backends implement only the non-blocking core.

Callbacks always run on the event loop thread.  Besides the one public callback slot per
kind (``set_input_callback`` ...), a handle keeps one-shot listeners (``on_next_input`` ...)
so that several readers (streams, awaiting coroutines) can wait on one handle.
"""

from __future__ import annotations

import abc
import asyncio
import enum
import errno
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from aiodbox.fs.errors import FsError, FsNotSupported

Callback = Callable[[], None]


class OpenMode(enum.Enum):
    """How :meth:`FS.open` opens an existing file."""

    READONLY = "readonly"
    """Read only; ``write`` raises."""
    APPEND = "append"
    """Reads see committed data; writes are appended at ``commit`` (needs ``APPEND``)."""


class CreateMode(enum.Enum):
    """What :meth:`FileHandle.commit` does when the created file's name already exists."""

    FAIL_IF_EXISTS = "fail-if-exists"
    """Commit raises :class:`~aiodbox.fs.errors.FsExists`; the existing file is untouched."""
    REPLACE_IF_EXISTS = "replace-if-exists"
    """Commit atomically replaces the existing file (readers see old or new, never a mix)."""


class FsProperty(enum.Flag):
    """Capabilities a backend declares; callers test these instead of backend types."""

    NONE = 0
    LOCKS = enum.auto()
    """``try_lock`` is a real exclusive lock, cheap and shared with other processes."""
    APPEND = enum.auto()
    """``open(path, OpenMode.APPEND)`` appends to existing files (mdbox needs it)."""
    RENAME = enum.auto()
    """``rename`` is atomic."""
    LINK = enum.auto()
    """``link`` makes a hard link (sdbox copies without copying bytes)."""
    ITER = enum.auto()
    """``iterate`` lists directories."""
    FD = enum.auto()
    """Read handles may expose a real file descriptor (``fileno``) for ``sendfile``."""
    DIRECTORIES = enum.auto()
    """Directories are real objects (``mkdir``/``rmdir`` do something)."""
    PERSISTENT = enum.auto()
    """Data survives the process (everything but ``memory``)."""


class FsyncPolicy(enum.Enum):
    """When commits reach stable storage (Dovecot's ``mail_fsync``)."""

    ALWAYS = "always"
    """fsync the file on every commit and the directory after every name change."""
    OPTIMIZED = "optimized"
    """fdatasync the file on commit; fsync the directory only when a new name appeared."""
    NEVER = "never"
    """Never fsync (tests, benchmarks, throw-away data)."""


@dataclass(frozen=True, slots=True)
class Perms:
    """Permissions for created files and directories.

    Attributes:
        mode: file mode bits (directories get the matching search bits added).
        gid: group to give new files, or None to keep the process default.
    """

    mode: int = 0o600
    gid: int | None = None


@dataclass(frozen=True, slots=True)
class FsStat:
    """What :meth:`FS.stat` returns."""

    size: int
    mtime: float
    is_dir: bool


class FileHandle(abc.ABC):
    """A file being read, appended to, or created.

    Subclasses implement the non-blocking core (``pread``, ``write``, ``commit``,
    ``rollback``, ``close``, ``try_lock``, ``opened``, ``open_error``) and call
    ``_notify_open``, ``_notify_input`` and ``_notify_output`` on the event loop when the
    open finished, data arrived, or buffer space/commit completion happened.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._callbacks: dict[str, Callback | None] = {"open": None, "input": None, "output": None}
        self._listeners: dict[str, list[Callback]] = {"open": [], "input": [], "output": []}
        self._input_at: dict[int, list[Callback]] = {}
        self._upstream_input: Callable[[int | None, int | None], None] | None = None
        self._ready_streak = 0

    # ----------------------------------------------------------------- the core

    @property
    @abc.abstractmethod
    def opened(self) -> bool:
        """True once the background open finished (successfully or not)."""

    @property
    @abc.abstractmethod
    def open_error(self) -> FsError | None:
        """The error the open finished with, or None (also None while in progress)."""

    @abc.abstractmethod
    def pread(self, size: int, offset: int) -> bytes:
        """Return up to ``size`` committed bytes at ``offset`` that are already buffered.

        Returns ``b""`` at end of file.  Data written but not committed is never returned.

        Raises:
            BlockingIOError: nothing is buffered yet; a background read was started and the
                input callback fires when data is ready.
            FsError: the open or the read failed (``FsNotFound`` for a missing file).
        """

    @abc.abstractmethod
    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append ``data`` to the write buffer; return how many bytes were accepted.

        Nothing written becomes visible (to this or any other handle or process) before
        :meth:`commit` completes.

        Raises:
            BlockingIOError: the buffer is full and nothing was accepted; the output
                callback fires when it drained.
            FsError: the open or an earlier background flush failed, or the handle is
                read-only.
        """

    @abc.abstractmethod
    def commit(self, filename: str | None = None) -> None:
        """Make all writes since the last commit visible, atomically.

        For a created file, ``filename`` (a bare name) replaces the file name given at
        ``create``, in the same directory: the final name may be decided only now.  The
        data is on stable storage per the FS's fsync policy before the name appears.
        After a successful commit a created handle keeps working like one opened with
        ``OpenMode.APPEND``.

        Returns when the commit has completed.

        Raises:
            BlockingIOError: the commit is in progress (the first call starts it); the
                output callback fires when it finished; call again with the same
                arguments to collect the result.
            FsExists: ``FAIL_IF_EXISTS`` and the name exists.
            FsError: the commit failed; nothing became visible.
        """

    @abc.abstractmethod
    def rollback(self) -> None:
        """Discard every write since the last commit (effective at once for readers)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the handle: implicit rollback, locks dropped.

        A created file that was never committed leaves no file and no temp file behind
        (the clean-up finishes in the background; :meth:`aclose` waits for it).
        """

    @abc.abstractmethod
    def try_lock(self) -> bool:
        """Take an exclusive lock on the file without waiting (synchronous).

        Returns:
            True if this handle now holds the lock, False if someone else holds it.

        Raises:
            BlockingIOError: the open is still in flight.
            FsNotSupported: the backend has no ``LOCKS`` property.
            FsError: the open failed.
        """

    def unlock(self) -> None:
        """Drop a lock taken with :meth:`try_lock` (closing the handle also drops it)."""
        return

    def size_under_lock(self) -> int | None:
        """While this handle holds its lock: the committed file's size as of now, other
        handles' and processes' appends included, learnt without waiting; None where the
        backend cannot tell at once (then :meth:`FS.stat` the path).

        Raises:
            FsNotFound: the file lost its name since this handle opened it (deleted):
                what is appended through this handle would be lost.
        """
        return None

    def fileno(self) -> int | None:
        """A real file descriptor of the committed file, or None (``FD`` property)."""
        return None

    @property
    def size(self) -> int | None:
        """Size of the committed file as this handle knows it, or None.

        Known once the open finished (the open already learnt it, so asking costs no
        ``stat``); it follows this handle's own commits, not other writers' appends.
        """
        return None

    # ------------------------------------------------------------ callbacks

    def set_open_callback(self, cb: Callback | None) -> None:
        """Call ``cb`` on the loop when the open finished (at once if it already has)."""
        self._callbacks["open"] = cb
        if cb is not None and self.opened:
            asyncio.get_running_loop().call_soon(cb)

    def set_input_callback(self, cb: Callback | None) -> None:
        """Call ``cb`` on the loop whenever more data can be read."""
        self._callbacks["input"] = cb

    def set_output_callback(self, cb: Callback | None) -> None:
        """Call ``cb`` on the loop whenever buffer space freed up or a commit finished."""
        self._callbacks["output"] = cb

    def on_next_open(self, cb: Callback) -> None:
        """One-shot listener: ``cb`` runs once when the open finished."""
        if self.opened:
            asyncio.get_running_loop().call_soon(cb)
        else:
            self._listeners["open"].append(cb)

    def on_next_input(self, cb: Callback, offset: int | None = None) -> None:
        """One-shot listener: ``cb`` runs once at the next input notification.

        With ``offset``, only a notification about data at that offset (or one that
        concerns the whole handle, such as the open finishing) runs it, so many readers
        waiting on different parts of one file are not all woken by every read.
        """
        if offset is None:
            self._listeners["input"].append(cb)
        else:
            self._input_at.setdefault(offset, []).append(cb)

    def on_next_output(self, cb: Callback) -> None:
        """One-shot listener: ``cb`` runs once at the next output notification."""
        self._listeners["output"].append(cb)

    def _notify(self, kind: str) -> None:
        listeners = self._listeners[kind]
        if listeners:
            self._listeners[kind] = []
            for listener in listeners:
                listener()
        cb = self._callbacks[kind]
        if cb is not None:
            cb()

    def _notify_open(self) -> None:
        self._notify("open")
        # A reader that called pread before the open finished is waiting for input.
        self._notify_input()
        self._notify("output")

    def _notify_input(self, start: int | None = None, end: int | None = None) -> None:
        """Data arrived for ``[start, end)``, or, without a range, for the whole handle."""
        waiting = self._input_at
        if waiting:
            if start is None or end is None:
                self._input_at = {}
                for cbs in waiting.values():
                    for cb in cbs:
                        cb()
            else:
                for off in [o for o in waiting if start <= o < end]:
                    for cb in waiting.pop(off):
                        cb()
        self._notify("input")
        if self._upstream_input is not None:
            self._upstream_input(start, end)

    def _notify_output(self) -> None:
        self._notify("output")

    async def _wait(self, register: Callable[[Callback], None]) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not fut.done():
                fut.set_result(None)

        register(wake)
        await fut

    # ------------------------------------------------------ awaitable helpers

    async def wait_open(self) -> None:
        """Wait until the open finished.

        Raises:
            FsError: the open failed.
        """
        if not self.opened:
            await self._wait(self.on_next_open)
        err = self.open_error
        if err is not None:
            raise err

    async def read(self, size: int, offset: int) -> bytes:
        """Await up to ``size`` bytes at ``offset`` (``b""`` at end of file).

        A coroutine whose reads keep being served at once (from the page cache) yields
        to the loop every 32 of them, so it cannot starve other tasks.
        """
        while True:
            try:
                data = self._pread_or_start(size, offset)
            except BlockingIOError:
                self._ready_streak = 0
                await self._wait(lambda cb: self.on_next_input(cb, offset))
                continue
            if not isinstance(data, bytes):  # a read this call started: await it itself
                self._ready_streak = 0
                try:
                    await data  # its outcome is kept for the next pread at ``offset``
                except asyncio.CancelledError:
                    raise
                except BaseException:  # (raised by that pread)
                    pass
                continue
            self._ready_streak += 1
            if self._ready_streak >= 32:
                self._ready_streak = 0
                await asyncio.sleep(0)
            return data

    def _pread_or_start(self, size: int, offset: int) -> bytes | asyncio.Future[Any]:
        """:meth:`pread`, or the future of the background read it started (a backend
        may say so, to spare its reader an input notification and a second wake-up).

        The read's outcome must be kept for the next :meth:`pread` at ``offset``.
        """
        return self.pread(size, offset)

    async def read_exactly(self, size: int, offset: int) -> bytes:
        """Await exactly ``size`` bytes at ``offset``.

        Raises:
            EOFError: the file ends first.
        """
        parts: list[bytes] = []
        got = 0
        while got < size:
            chunk = await self.read(size - got, offset + got)
            if not chunk:
                raise EOFError(f"{self.path}: {size} bytes wanted at {offset}, file ends")
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)

    async def write_all(self, data: bytes | bytearray | memoryview) -> None:
        """Await until all of ``data`` was accepted into the write buffer."""
        view = memoryview(data)
        while view:
            try:
                n = self.write(view)
            except BlockingIOError:
                await self._wait(self.on_next_output)
                continue
            view = view[n:]

    async def acommit(self, filename: str | None = None) -> None:
        """Await :meth:`commit` (same arguments, same errors)."""
        while True:
            try:
                self.commit(filename)
                return
            except BlockingIOError:
                await self._wait(self.on_next_output)

    async def aclose(self) -> None:
        """Close and wait until the background clean-up (temp file removal) finished."""
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class StagedFile(abc.ABC):
    """A complete file, durable as the FS's fsync policy asks, under a temporary name in
    ``directory`` that nothing lists or reads (see :meth:`FS.stage_file`).

    The blocking methods do file system calls and wait for them: they are for a worker
    thread (an index job naming the file inside its transaction), never the event loop.
    """

    directory: str
    size: int
    name: str | None = None
    """Its final name while it has one (:meth:`publish_blocking`)."""

    @abc.abstractmethod
    def publish_blocking(self, name: str) -> None:
        """Give the file its final name ``directory/name``: visible from now on, durable
        once :meth:`sync_directory_blocking` returned.  Blocking.

        Raises:
            FileExistsError: ``name`` is taken (the staged file keeps its temp name).
            OSError: anything else; the file keeps its temp name.
        """

    @abc.abstractmethod
    def unpublish_blocking(self, name: str) -> None:
        """Take the final name ``name`` back (the file is gone).  Blocking."""

    @abc.abstractmethod
    def sync_directory_blocking(self) -> None:
        """Make the names given in ``directory`` so far durable (per the fsync policy).
        Blocking."""

    @abc.abstractmethod
    async def discard(self) -> None:
        """Remove the file if it was never published (idempotent; errors are logged)."""


class FS(abc.ABC):
    """A filesystem backend or a wrapper stacked on one.

    Paths are relative, ``/``-separated, without ``..``; backends reject anything that
    would leave their root with :class:`~aiodbox.fs.errors.FsPermission`.
    """

    properties: FsProperty = FsProperty.NONE
    name: str = "fs"

    @abc.abstractmethod
    def open(self, path: str, mode: OpenMode = OpenMode.READONLY) -> FileHandle:
        """Start opening an existing file; never raises for I/O (see :class:`FileHandle`)."""

    @abc.abstractmethod
    def create(
        self,
        path: str,
        mode: CreateMode = CreateMode.FAIL_IF_EXISTS,
        perms: Perms | None = None,
    ) -> FileHandle:
        """Start creating a file; nothing is visible until ``commit``; never raises for I/O.

        Missing parent directories are created at commit.
        """

    @abc.abstractmethod
    async def stat(self, path: str) -> FsStat:
        """Return size, mtime and kind of ``path``.  Raises ``FsNotFound`` if missing."""

    async def exists(self, path: str) -> bool:
        """True if ``path`` exists (file or directory)."""
        try:
            await self.stat(path)
        except FileNotFoundError:
            return False
        return True

    @abc.abstractmethod
    async def delete(self, path: str) -> None:
        """Remove a file; visible to everyone when this returns.  ``FsNotFound`` if missing."""

    @abc.abstractmethod
    async def rename(self, src: str, dst: str) -> None:
        """Atomically rename ``src`` to ``dst``, replacing ``dst`` (``RENAME`` property)."""

    async def link(self, src: str, dst: str) -> None:
        """Make ``dst`` a hard link of ``src`` (``LINK`` property); ``FsExists`` if taken."""
        raise FsNotSupported("link", dst, errno.ENOTSUP)

    @abc.abstractmethod
    async def mkdir(self, path: str, perms: Perms | None = None) -> None:
        """Create a directory and missing parents; no error if it exists."""

    @abc.abstractmethod
    async def rmdir(self, path: str) -> None:
        """Remove an empty directory.  ``FsNotEmpty`` if it is not empty."""

    @abc.abstractmethod
    def iterate(self, prefix: str, *, dirs: bool = False) -> AsyncIterator[str]:
        """Yield the paths of the files (or, with ``dirs``, the directories) in ``prefix``.

        Not recursive; order unspecified; temp files of uncommitted creates never appear.
        A missing directory yields nothing.
        """

    async def read_file(self, path: str) -> bytes:
        """Return the whole committed content of ``path`` (convenience)."""
        h = self.open(path)
        try:
            parts: list[bytes] = []
            offset = 0
            while chunk := await h.read(1 << 20, offset):
                parts.append(chunk)
                offset += len(chunk)
            return b"".join(parts)
        finally:
            await h.aclose()

    async def read_small_files(
        self, paths: Sequence[str], limit: int
    ) -> list[bytes | FsError | None]:
        """Read several small files whole, together (convenience for prefetching).

        Returns, for each path in order: its whole committed content if it is at most
        ``limit`` bytes; None if it is larger (open it to read it in parts); or the
        :class:`~aiodbox.fs.errors.FsError` reading it raised (``FsNotFound`` for a
        missing file).  Other exceptions propagate.

        Backends may do it in fewer round trips or hand-offs than one open per file
        (posix: one worker job for the lot); this default opens every file at once, each
        with its first read already asked for.
        """

        async def one(path: str) -> bytes | FsError | None:
            h = self.open(path)
            try:
                data = await h.read(limit + 1, 0)
                size = h.size
                while len(data) <= limit and (size is None or len(data) < size):
                    if size is not None and size > limit:
                        return None
                    more = await h.read(limit + 1 - len(data), len(data))
                    if not more:
                        break
                    data += more
                return None if len(data) > limit else data
            except FsError as e:
                return e
            finally:
                await h.aclose()

        if len(paths) == 1:
            return [await one(paths[0])]
        return list(await asyncio.gather(*(one(p) for p in paths)))

    def read_small_file_now(self, path: str, limit: int) -> bytes | None:
        """:meth:`read_small_files` for one file, without waiting: its whole content, or
        None if it is larger than ``limit``, when the backend can tell at once (posix:
        path and data in the kernel's caches).

        Raises:
            BlockingIOError: not possible without waiting, or not known to be (nothing
                was started): use :meth:`read_small_files`, which also reports errors.
        """
        raise BlockingIOError(errno.EAGAIN, "no immediate reads")

    async def stage_file(self, directory: str, data: bytes) -> StagedFile | None:
        """Write ``data`` to a new file in ``directory`` that stays unnamed (a temp name
        nothing lists) until :meth:`StagedFile.publish_blocking` names it: a store can
        then name files inside its own index transaction.  Creates missing parents.

        Returns:
            The staged file, or None where the backend cannot do this (names cost
            nothing to take back on a local disk only): use :meth:`write_file`.
        """
        return None

    async def write_file(
        self,
        path: str,
        data: bytes,
        mode: CreateMode = CreateMode.REPLACE_IF_EXISTS,
        perms: Perms | None = None,
    ) -> None:
        """Create ``path`` with ``data`` and commit it (convenience)."""
        h = self.create(path, mode, perms)
        try:
            await h.write_all(data)
            await h.acommit()
        finally:
            await h.aclose()

    async def copy(self, src: str, dst: str) -> None:
        """Copy ``src`` to a new file ``dst``: a hard link where the backend has ``LINK``.

        Raises ``FsExists`` if ``dst`` exists.
        """
        if FsProperty.LINK in self.properties:
            await self.link(src, dst)
            return
        await self.write_file(dst, await self.read_file(src), CreateMode.FAIL_IF_EXISTS)

    def stats(self) -> dict[str, Any]:
        """Counters of this layer and the layers below it (see ``aiodbox.fs.stats``)."""
        return {}

    @property
    def inner(self) -> FS | None:
        """The FS this one wraps, or None for a backend."""
        return None

    async def aclose(self) -> None:
        """Release backend resources (worker threads, rings, connections)."""
        return
