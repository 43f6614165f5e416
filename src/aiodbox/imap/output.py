"""Writing responses: batching, back-pressure, body streaming and zero-copy sendfile.

Theory of operation
-------------------
Everything a connection sends goes through its :class:`Output`.  The transport's write
buffer limit is ``[imap] output_buffer_size``; asyncio calls the protocol's
``pause_writing()`` when the buffer grows past it and ``resume_writing()`` when it has
drained, and the protocol forwards both here.  Code that can produce a lot of output
(FETCH, SEARCH, LIST) awaits :meth:`Output.drain` between pieces: while the client does
not read, the command simply waits, so a client that never reads holds at most
``output_buffer_size`` plus one piece (one FETCH response, or one body chunk of at most
the stream's read-ahead) — never unbounded data.

Small responses are gathered with :meth:`Output.buffer` into one write of up to
:data:`BATCH_SIZE` bytes (one ``send()`` for many small FETCH responses).  Message bodies
are copied from the non-blocking :class:`~aiodbox.dbox.file_read.BodyStream`
(:meth:`Output.copy_stream`: ``read()``, or wait for the readable callback on
``BlockingIOError``), or, when the connection has no TLS, the bytes are stored as served
and the backend exposes a real file descriptor, sent with ``os.sendfile`` on the socket
(:meth:`Output.sendfile`: the kernel copies file pages straight to the socket, at most
256 KiB per call, yielding to the loop between calls).  ``loop.sendfile`` is not used:
uvloop lacks it.  The socket is written directly only while the transport holds nothing;
when it is full, one read-ahead-sized piece goes through the transport and the send
waits until the transport drained it (its write-buffer limits set to zero meanwhile), so
a client that does not read still holds at most ``output_buffer_size`` plus one piece.
``sendfile`` reads the file in the calling thread, so before using it on the loop the
range is checked to be in the page cache (a ``preadv2(RWF_NOWAIT)`` probe of its first
and last byte); a cold range is read into the cache by a worker thread first.  The
residual risk (a middle page evicted between the probe and the send) costs one page-in
on the loop, never a wrong answer.

If the connection is lost, writes are dropped and :meth:`Output.drain` raises
:class:`ConnectionLost`, which ends the running command quietly.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiodbox.dbox.file_read import BodyStream

BATCH_SIZE = 64 << 10
"""Buffered small responses are written once they reach this size."""
SENDFILE_MIN = 128 << 10
"""Bodies at least this large go through ``sendfile`` when it is possible."""
_YIELD_EVERY = 16
"""``copy_stream`` yields to the loop after this many chunks served without waiting."""
_WARM_CHUNK = 1 << 20
_SENDFILE_CHUNK = 256 << 10
"""At most this much per ``sendfile`` call; the loop is yielded to between calls."""
_PIECE = 64 << 10
"""What goes through the transport when the socket is full (see :meth:`Output.sendfile`)."""


class ConnectionLost(Exception):
    """The client went away while a response was being written."""


class OutputError(Exception):
    """A literal could not be completed (its source failed after its size was sent).

    The protocol cannot recover from that: the connection must be closed.
    """


def _resident(fd: int, offset: int, count: int) -> bool:
    """True if the first and last byte of the range are in the page cache."""
    probe = bytearray(1)
    flags = getattr(os, "RWF_NOWAIT", 0)
    if not flags:
        return False
    try:
        for pos in (offset, offset + count - 1):
            if os.preadv(fd, [probe], pos, flags) != 1:
                return False
    except OSError:  # EAGAIN: not cached; EOPNOTSUPP: cannot tell
        return False
    return True


async def _read_piece(fd: int, offset: int, size: int) -> bytes:
    """``size`` bytes at ``offset``: from the page cache on the loop, else in a thread."""
    flags = getattr(os, "RWF_NOWAIT", 0)
    if flags:
        buf = bytearray(size)
        try:
            n = os.preadv(fd, [buf], offset, flags)
        except OSError:  # EAGAIN: not cached (EOPNOTSUPP: cannot tell)
            pass
        else:
            if n == size:
                return bytes(buf)
    return await asyncio.to_thread(os.pread, fd, size, offset)


def _warm(fd: int, offset: int, count: int) -> None:
    """Read the range into the page cache (runs in a worker thread)."""
    with contextlib.suppress(OSError, AttributeError):
        os.posix_fadvise(fd, offset, count, os.POSIX_FADV_WILLNEED)
    buf = bytearray(min(count, _WARM_CHUNK))
    pos, end = offset, offset + count
    while pos < end:
        n = os.preadv(fd, [memoryview(buf)[: min(len(buf), end - pos)]], pos)
        if n <= 0:
            return
        pos += n


class Output:
    """The sending side of one connection; see the module docstring.

    Attributes:
        bytes_out: Bytes handed to the transport so far.
        sendfile_ok: True while ``sendfile`` may be tried (no TLS, a socket transport).
    """

    __slots__ = ("_batch", "_closed", "_paused", "_waiter", "bytes_out", "sendfile_ok", "transport")

    def __init__(self, transport: asyncio.Transport, *, sendfile_ok: bool) -> None:
        self.transport = transport
        self.bytes_out = 0
        self.sendfile_ok = sendfile_ok
        self._paused = False
        self._closed = False
        self._waiter: asyncio.Future[None] | None = None
        self._batch: bytearray | None = None

    @property
    def paused(self) -> bool:
        """True while the transport's buffer is over its limit."""
        return self._paused

    @property
    def closed(self) -> bool:
        """True once the connection was lost or closed."""
        return self._closed

    # ----------------------------------------------------------------- writing

    def write(self, data: bytes) -> None:
        """Send ``data`` now (after anything buffered); dropped if the connection is gone."""
        if self._batch:
            self.flush()
        if self._closed or not data:
            return
        self.transport.write(data)
        self.bytes_out += len(data)

    def buffer(self, data: bytes) -> None:
        """Queue ``data`` to be sent with the next write, flush, or once the batch is full."""
        batch = self._batch
        if batch is None:
            batch = self._batch = bytearray()
        batch += data
        if len(batch) >= BATCH_SIZE:
            self.flush()

    def buffer_parts(self, parts: list[bytes]) -> None:
        """:meth:`buffer` for a response in pieces (each copied once, into the batch)."""
        batch = self._batch
        if batch is None:
            batch = self._batch = bytearray()
        for part in parts:
            batch += part
        if len(batch) >= BATCH_SIZE:
            self.flush()

    def flush(self) -> None:
        """Send what :meth:`buffer` queued."""
        batch = self._batch
        if not batch:
            return
        self._batch = None  # a new one next time: the transport may keep this object
        if self._closed:
            return
        self.transport.write(batch)
        self.bytes_out += len(batch)

    async def drain(self) -> None:
        """Flush, then wait while the transport's buffer is over its limit.

        Raises:
            ConnectionLost: The connection is gone.
        """
        self.flush()
        while self._paused and not self._closed:
            waiter = self._waiter
            if waiter is None or waiter.done():
                waiter = self._waiter = asyncio.get_running_loop().create_future()
            await waiter
        if self._closed:
            raise ConnectionLost

    # ------------------------------------------------------------ flow control

    def pause(self) -> None:
        """The transport's buffer went over the limit (``pause_writing``)."""
        self._paused = True

    def resume(self) -> None:
        """The transport's buffer drained (``resume_writing``)."""
        self._paused = False
        self._wake()

    def lost(self) -> None:
        """The connection is gone: drop further writes, fail waiters."""
        self._closed = True
        self._batch = None
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        self._waiter = None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ------------------------------------------------------------ bodies

    async def copy_stream(self, stream: BodyStream, size: int) -> None:
        """Send exactly ``size`` bytes from ``stream`` with back-pressure.

        Raises:
            ConnectionLost: The connection went away.
            OutputError: The stream failed or ended early (the literal is incomplete).
        """
        self.flush()
        left = size
        ready = 0
        while left > 0:
            try:
                chunk = stream.read(left)
            except BlockingIOError:
                ready = 0
                await stream.wait_readable()
                continue
            except Exception as exc:
                raise OutputError(f"message body unreadable: {exc}") from exc
            if not chunk:
                raise OutputError(f"message body ended {left} bytes early")
            left -= len(chunk)
            self.write(chunk)
            if self._paused or self._closed:
                await self.drain()
                ready = 0
            else:
                ready += 1
                if ready >= _YIELD_EVERY:
                    ready = 0
                    await asyncio.sleep(0)

    async def sendfile(self, fd: int, offset: int, count: int) -> bool:
        """Send ``count`` bytes of file ``fd`` from ``offset`` with ``os.sendfile``.

        The kernel copies the file's pages to the socket; nothing passes through Python.
        The socket is written directly (non-blocking), only while the transport has
        nothing queued, so the order of the bytes is kept.  When the socket is full, the
        next piece goes through the transport (one read-ahead of copying) and the send
        waits until the transport drained it: that is how the socket is known to be
        writable again, on any event loop (uvloop has no ``loop.sendfile``).

        Returns:
            True if everything was sent; False if sendfile is not possible on this
            transport (nothing was sent: stream the body instead).

        Raises:
            ConnectionLost: The connection went away.
            OutputError: Sending failed after some bytes went out.
        """
        if not self.sendfile_ok or self._closed:
            return False
        sock = self.transport.get_extra_info("socket")
        sock_fd = sock.fileno() if sock is not None else -1
        if sock_fd < 0:
            self.sendfile_ok = False
            return False
        await self.drain()
        if not _resident(fd, offset, count):
            await asyncio.to_thread(_warm, fd, offset, count)
        sent = 0
        while sent < count:
            if self._closed:
                raise ConnectionLost
            if self.transport.get_write_buffer_size():
                await self._drain_all()
                continue
            want = min(count - sent, _SENDFILE_CHUNK)
            try:
                n = os.sendfile(sock_fd, fd, offset + sent, want)
            except BlockingIOError:
                n = -1
            except OSError as exc:
                if self._closed or self.transport.is_closing():
                    raise ConnectionLost from exc
                if sent == 0 and exc.errno in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    self.sendfile_ok = False  # not for this socket or file: stream instead
                    return False
                raise OutputError(f"sendfile failed: {exc}") from exc
            if n == 0:
                raise OutputError(f"sendfile sent {sent} of {count} bytes: the file is short")
            if n > 0:
                sent += n
                self.bytes_out += n
                await asyncio.sleep(0)  # other connections go between two calls
                continue
            # The socket is full: hand the next piece to the transport, which sends it
            # when the socket takes more; wait for that.
            piece = await _read_piece(fd, offset + sent, min(count - sent, _PIECE))
            if not piece:
                raise OutputError(f"sendfile sent {sent} of {count} bytes: the file is short")
            self.transport.write(piece)
            sent += len(piece)
            self.bytes_out += len(piece)
            await self._drain_all()
        return True

    async def _drain_all(self) -> None:
        """Wait until the transport has sent everything it holds (not just down to its
        low-water mark), then restore its limits."""
        t = self.transport
        low, high = t.get_write_buffer_limits()
        t.set_write_buffer_limits(high=0, low=0)  # pauses us now if anything is queued
        try:
            await self.drain()
        finally:
            if not self._closed:
                t.set_write_buffer_limits(high=high, low=low)
