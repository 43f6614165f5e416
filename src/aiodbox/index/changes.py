"""Noticing that an index changed without asking SQLite: inotify on index directories.

Theory of operation
-------------------
Before every IMAP command a session must learn whether another process committed to
its mailbox's index.  Asking SQLite (``PRAGMA data_version``) is cheap, but it is an
SQLite call, so it runs on a worker thread: a round trip through the thread pool per
command, which under load is what dominates a NOOP's latency.

Instead, one inotify descriptor per event loop watches each open index directory; the
loop reads its events like a socket's (``add_reader``, non-blocking reads).  A write
to ``index.sqlite`` or its ``-wal`` file — which every commit of every process makes —
bumps that directory's ``generation``.  A caller remembers the generation it last
checked at; an unchanged generation means nothing was committed since, and only a
changed one costs the SQLite round trip.  (Writes through shared memory, like the
``-shm`` read marks, make no inotify events and need none.)

A second counter, ``list_generation``, grows with writes to the marker file
``mailboxes.changed`` in the same directory, which every process writes *after* it
committed a change to the mailbox list (create, delete, rename, a new GUID): a cache
of mailbox names can then be trusted while it is unchanged.

inotify sees local filesystems only; the index root is local by design (DESIGN.md §5).
Where inotify is missing or out of watches, :func:`watch_directory` returns None and
callers fall back to asking SQLite every time.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import os
import struct
import weakref
from dataclasses import dataclass, field

log = logging.getLogger("aiodbox.index")

_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000
_IN_MODIFY = 0x00000002
_IN_MOVED_TO = 0x00000080
_IN_CREATE = 0x00000100
_IN_DELETE = 0x00000200
_IN_IGNORED = 0x00008000
_IN_Q_OVERFLOW = 0x00004000
_EVENT = struct.Struct("iIII")
_WATCH_MASK = _IN_MODIFY | _IN_CREATE | _IN_DELETE | _IN_MOVED_TO
_NAME_PREFIX = b"index.sqlite"
LIST_MARKER = "mailboxes.changed"
"""Written after every committed change of the mailbox list (see the module docstring)."""
_LIST_MARKER = LIST_MARKER.encode()


@dataclass
class DirectoryChanges:
    """Changes seen in one index directory: ``generation`` grows with every write."""

    directory: str
    generation: int = 0
    list_generation: int = 0
    alive: bool = True
    wd: int = -1
    _watcher: _Watcher | None = field(default=None, repr=False)
    _waiters: list[asyncio.Future[None]] = field(default_factory=list, repr=False)

    def current(self) -> int:
        """The generation including every write that completed before this call.

        inotify queues an event inside the writer's ``write()``; reading the queue here
        (a non-blocking read) makes the answer exact rather than "as of the last loop
        iteration".
        """
        if self._watcher is not None:
            self._watcher.drain()
        return self.generation

    def current_list(self) -> int:
        """``list_generation`` including every marker write completed before this call."""
        if self._watcher is not None:
            self._watcher.drain()
        return self.list_generation

    async def wait_past(self, generation: int, timeout: float) -> None:
        """Return once the generation is past ``generation`` (some process wrote since it
        was read), or after ``timeout`` seconds, whichever is first."""
        if self.current() != generation or self._watcher is None:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                await waiter
        except TimeoutError:
            pass
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def _changed(self, *, mailbox_list: bool = False) -> None:
        """Count a write (with ``mailbox_list``, also a change of the mailbox list) and
        wake :meth:`wait_past`."""
        self.generation += 1
        if mailbox_list:
            self.list_generation += 1
        self._wake()

    def _wake(self) -> None:
        if not self._waiters:
            return
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    def close(self) -> None:
        """Stop watching (the generation stays)."""
        if self._watcher is not None:
            self._watcher.unwatch(self)
            self._watcher = None
        self._wake()


class _Watcher:
    """One inotify descriptor on one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        self.loop = loop
        self.fd = fd
        self.by_wd: dict[int, list[DirectoryChanges]] = {}
        loop.add_reader(fd, self.drain)

    def watch(self, directory: str) -> DirectoryChanges | None:
        wd = _libc.inotify_add_watch(self.fd, os.fsencode(directory), _WATCH_MASK)
        if wd < 0:
            err = ctypes.get_errno()
            log.info(
                "inotify cannot watch %s (%s): checking SQLite on every sync",
                directory,
                os.strerror(err),
            )
            return None
        changes = DirectoryChanges(directory, wd=wd, _watcher=self)
        self.by_wd.setdefault(wd, []).append(changes)
        return changes

    def unwatch(self, changes: DirectoryChanges) -> None:
        wd = changes.wd
        listeners = self.by_wd.get(wd)
        if listeners and changes in listeners:
            listeners.remove(changes)
            if not listeners:
                del self.by_wd[wd]
                _libc.inotify_rm_watch(self.fd, wd)
        if not self.by_wd:
            self.close()

    def close(self) -> None:
        """Give the inotify descriptor back (instances are a scarce per-user resource)."""
        if self.fd < 0:
            return
        for listeners in self.by_wd.values():
            for c in listeners:  # nobody counts their writes any more
                c.alive = False
                c._watcher = None
                c._changed()
        self.by_wd.clear()
        if _watchers.get(self.loop) is self:
            del _watchers[self.loop]
        if not self.loop.is_closed():
            self.loop.remove_reader(self.fd)
        os.close(self.fd)
        self.fd = -1

    def drain(self) -> None:
        """Read every queued event (also the ``add_reader`` callback)."""
        while self.fd >= 0:
            try:
                data = os.read(self.fd, 64 * 1024)
            except BlockingIOError:
                return
            except OSError as e:  # the descriptor broke: everyone falls back to SQLite
                log.warning("inotify read failed: %s", e)
                self._fail_all()
                return
            pos = 0
            while pos + _EVENT.size <= len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, pos)
                name = data[pos + _EVENT.size : pos + _EVENT.size + length].rstrip(b"\0")
                pos += _EVENT.size + length
                if mask & _IN_Q_OVERFLOW:
                    self._bump_all()
                    continue
                listeners = self.by_wd.get(wd, [])
                if mask & _IN_IGNORED:
                    for c in listeners:
                        c.alive = False
                        c._changed(mailbox_list=True)
                    self.by_wd.pop(wd, None)
                    continue
                if name.startswith(_NAME_PREFIX) and not name.endswith(b"-shm"):
                    for c in listeners:
                        c._changed()
                elif name == _LIST_MARKER:
                    for c in listeners:
                        c.list_generation += 1

    def _bump_all(self) -> None:
        for listeners in self.by_wd.values():
            for c in listeners:
                c._changed(mailbox_list=True)

    def _fail_all(self) -> None:
        self.close()


class _Libc:
    def __init__(self) -> None:
        self.ok = False
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            self._init = libc.inotify_init1
            self._add = libc.inotify_add_watch
            self._rm = libc.inotify_rm_watch
        except (OSError, AttributeError):
            return
        self._init.restype = ctypes.c_int
        self._add.restype = ctypes.c_int
        self._rm.restype = ctypes.c_int
        self.ok = True

    def inotify_init1(self, flags: int) -> int:
        return int(self._init(flags))

    def inotify_add_watch(self, fd: int, path: bytes, mask: int) -> int:
        return int(self._add(fd, path, ctypes.c_uint32(mask)))

    def inotify_rm_watch(self, fd: int, wd: int) -> int:
        return int(self._rm(fd, wd))


_libc = _Libc()
_watchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Watcher] = (
    weakref.WeakKeyDictionary()
)


def watch_directory(directory: str) -> DirectoryChanges | None:
    """Start counting writes to the index files in ``directory`` (on the running loop).

    Returns None where inotify is not available: then nothing can be skipped.
    """
    if not _libc.ok or os.environ.get("AIODBOX_NO_INOTIFY"):
        return None
    loop = asyncio.get_running_loop()
    _close_watchers_of_closed_loops()
    watcher = _watchers.get(loop)
    if watcher is None:
        fd = _libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            if err not in (errno.EMFILE, errno.ENFILE, errno.ENOSYS):
                log.info("inotify unavailable: %s", os.strerror(err))
            return None
        watcher = _Watcher(loop, fd)
        _watchers[loop] = watcher
    changes = watcher.watch(directory)
    if not watcher.by_wd:
        watcher.close()
    return changes


def _close_watchers_of_closed_loops() -> None:
    """A loop that closed with directories still watched leaves its descriptor here."""
    for loop, watcher in list(_watchers.items()):
        if loop.is_closed():
            watcher.close()
