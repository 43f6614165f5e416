"""A minimal io_uring binding: raw syscalls through :mod:`ctypes`, rings through :mod:`mmap`.

Why raw syscalls and not liburing
---------------------------------
Debian's ``liburing.so.2`` exports ring setup, ``io_uring_submit`` and registration, but
everything that touches a submission or completion entry (``io_uring_get_sqe``, every
``io_uring_prep_*``, ``io_uring_peek_cqe``, ``io_uring_cqe_seen``) is ``static inline`` in
the header, so a ctypes binding has to write SQEs and read CQEs itself either way.  Going
through liburing would then add two contracts on top of the kernel's: the layout of the
userspace ``struct io_uring`` (which has changed across 2.x releases by carving fields out
of padding) and liburing's private ``sqe_head``/``sqe_tail`` bookkeeping that
``io_uring_submit`` flushes.  The kernel ABI we need instead is small and frozen: three
syscalls (``io_uring_setup``/``enter``/``register``, numbers 425/426/427 on every
architecture that has them), ``struct io_uring_params`` with the ring offsets, the 64-byte
SQE and the 16-byte CQE.  Setting up the rings ourselves is ~30 lines, there is no library
to be missing, and the rings are Python :class:`mmap.mmap` objects, so SQEs and CQEs are
written and read with bounds-checked :func:`struct.pack_into`/``unpack_from``: a layout
mistake raises instead of scribbling over memory.

Theory of operation
-------------------
::

    SQ ring mmap (IORING_OFF_SQ_RING)       SQE array mmap (IORING_OFF_SQES)
      khead   <- kernel advances              sqes[0..n-1], 64 bytes each; we fill
      ktail   <- we publish (submit)          sqes[tail & mask] and never reuse a
      array[] identity map i -> i             slot until khead has passed it
    CQ ring mmap (IORING_OFF_CQ_RING, or the same mapping with IORING_FEAT_SINGLE_MMAP)
      khead   <- we advance after reading     cqes[head & mask], 16 bytes each
      ktail   <- kernel publishes

* **Preparation** (``prep_*``) writes an SQE at the local tail and bumps the local tail
  only; nothing is visible to the kernel yet.  Each SQE gets a fresh ``user_data`` (a
  counter that starts at 1, so a zeroed CQE can never match a live operation).
* **Submission** (:meth:`Ring.submit`) stores the local tail into ``ktail`` and calls
  ``io_uring_enter`` once for everything prepared since the last call (callers batch).
* **Reaping** (:meth:`Ring.reap`) reads ``ktail``, unpacks every CQE between ``khead``
  and it, then stores the new ``khead``.

**Memory ordering.**  The rings are shared with the kernel.  On x86-64 (total store order)
plain aligned 32-bit loads and stores give exactly the acquire/release pairs liburing
uses: the SQE bytes are stored before the tail store, the CQE bytes are loaded after the
tail load, and the head store comes after them; each step is a separate C call, so no
compiler can reorder across them.  Index words are accessed through ``ctypes.c_uint32``
views (one aligned ``mov``), never byte by byte.  Other architectures need explicit
barriers Python cannot express, so :class:`Ring` refuses to start there
(:class:`UringUnavailable` names the reason) rather than guess.  For the same reason
kernel-side submission polling (``IORING_SETUP_SQPOLL``) is not offered: checking
``IORING_SQ_NEED_WAKEUP`` after publishing the tail needs a full store-load fence, which
plain Python cannot emit (and the team measured SQPOLL threads spinning on idle cores).

**Ownership.**  The ring keeps ``(token, keepalive)`` for every prepared SQE in a dict
keyed by ``user_data`` until that SQE's CQE has been reaped.  ``keepalive`` holds the
objects whose memory the kernel reads or writes (path bytes, data buffers, statx
buffers); callers never have to remember this, and dropping their own references (for
example because the awaiting coroutine was cancelled) cannot free memory the kernel still
uses.  ``token`` is the caller's: :meth:`Ring.reap` hands it back with the result.

**Capacity.**  The caller must not have more operations outstanding (prepared and not yet
reaped) than ``sq_entries``: then the SQ never overflows and, since the CQ has twice as
many entries, neither does the CQ.  :meth:`Ring.prep_nop` & co. raise
:class:`RingFullError` rather than overwrite a slot.  ``IORING_SQ_CQ_OVERFLOW`` is still
handled (by flushing the kernel's overflow list) as a second line of defence.

**Threads and fork.**  A ring is used from one thread.  After ``fork()`` the child shares
the parent's ring memory; it must not touch it (the engine enforces this) and should
create its own ring.
"""

from __future__ import annotations

import ctypes
import enum
import errno as _errno
import functools
import mmap
import os
import platform
import struct
import sys
from typing import Final, Generic, TypeAlias, TypeVar

__all__ = [
    "AT_EMPTY_PATH",
    "AT_FDCWD",
    "AT_REMOVEDIR",
    "AT_SYMLINK_NOFOLLOW",
    "FORCE_UNAVAILABLE_ENV",
    "IORING_FEAT_LINKED_FILE",
    "IORING_FEAT_NODROP",
    "IORING_FEAT_SINGLE_MMAP",
    "IOSQE_FIXED_FILE",
    "IOSQE_ASYNC",
    "IOSQE_IO_HARDLINK",
    "IOSQE_IO_LINK",
    "MAX_RW_COUNT",
    "REQUIRED_OPS",
    "RESOLVE_BENEATH",
    "RESOLVE_NO_MAGICLINKS",
    "STATX_BASIC_STATS",
    "STATX_SIZE",
    "Op",
    "ReadBuffer",
    "Ring",
    "RingFullError",
    "StrayCompletionError",
    "UringUnavailable",
    "WriteData",
    "platform_reason",
    "probe",
]

# --- kernel ABI (include/uapi/linux/io_uring.h, unchanged since the ops were added) -------

_NR_IO_URING_SETUP: Final = 425
_NR_IO_URING_ENTER: Final = 426
_NR_IO_URING_REGISTER: Final = 427


class Op(enum.IntEnum):
    """The ``IORING_OP_*`` opcodes this binding prepares (values are kernel ABI)."""

    NOP = 0
    FSYNC = 3
    OPENAT = 18
    CLOSE = 19
    STATX = 21
    READ = 22
    WRITE = 23
    RENAMEAT = 35
    UNLINKAT = 36
    OPENAT2 = 28
    MKDIRAT = 37
    LINKAT = 39
    FTRUNCATE = 55


#: Opcodes the engine needs, with the first Linux release that has each.
REQUIRED_OPS: Final[dict[Op, str]] = {
    Op.FSYNC: "5.1",
    Op.OPENAT: "5.6",
    Op.OPENAT2: "5.6",
    Op.CLOSE: "5.6",
    Op.STATX: "5.6",
    Op.READ: "5.6",
    Op.WRITE: "5.6",
    Op.RENAMEAT: "5.11",
    Op.UNLINKAT: "5.11",
    Op.MKDIRAT: "5.15",
    Op.LINKAT: "5.15",
}

IOSQE_FIXED_FILE: Final = 1 << 0
IOSQE_IO_LINK: Final = 1 << 2
IOSQE_IO_HARDLINK: Final = 1 << 3
#: Never try the operation inline in ``io_uring_enter``: hand it to an io-wq worker.
IOSQE_ASYNC: Final = 1 << 4

_IORING_SETUP_SUBMIT_ALL: Final = 1 << 7

IORING_FEAT_SINGLE_MMAP: Final = 1 << 0
IORING_FEAT_NODROP: Final = 1 << 1
IORING_FEAT_LINKED_FILE: Final = 1 << 12

_IORING_OFF_SQ_RING: Final = 0
_IORING_OFF_CQ_RING: Final = 0x8000000
_IORING_OFF_SQES: Final = 0x10000000

_IORING_ENTER_GETEVENTS: Final = 1 << 0
_IORING_SQ_CQ_OVERFLOW: Final = 1 << 1
_IORING_FSYNC_DATASYNC: Final = 1 << 0

_IORING_REGISTER_EVENTFD: Final = 4
_IORING_UNREGISTER_EVENTFD: Final = 5
_IORING_REGISTER_PROBE: Final = 8
_IORING_REGISTER_FILES2: Final = 13
_IORING_RSRC_REGISTER_SPARSE: Final = 1 << 0
_IO_URING_OP_SUPPORTED: Final = 1 << 0

AT_FDCWD: Final = -100
AT_SYMLINK_NOFOLLOW: Final = 0x100
AT_REMOVEDIR: Final = 0x200
AT_EMPTY_PATH: Final = 0x1000
STATX_SIZE: Final = 0x200
STATX_BASIC_STATS: Final = 0x7FF
#: ``struct open_how.resolve`` bits (``openat2(2)``).
RESOLVE_NO_MAGICLINKS: Final = 0x02
RESOLVE_BENEATH: Final = 0x08

#: The kernel caps one read or write at this many bytes (``MAX_RW_COUNT``).
MAX_RW_COUNT: Final = 0x7FFFF000

# struct io_uring_sqe: opcode flags ioprio fd | off | addr | len op_flags | user_data |
# buf_index personality file_index | addr3 pad2
_SQE: Final = struct.Struct("=BBHiQQIIQHHIQQ")
# struct io_uring_cqe: user_data res flags
_CQE: Final = struct.Struct("=QiI")
# struct open_how: flags mode resolve
_OPEN_HOW: Final = struct.Struct("=QQQ")
# struct io_uring_params: 10 u32, then io_sqring_offsets and io_cqring_offsets (8 u32 + u64)
_PARAMS: Final = struct.Struct("=10I8IQ8IQ")
_PROBE_OPS: Final = 256
_PROBE_HEADER: Final = struct.Struct("=BBHIII")
_PROBE_OP: Final = struct.Struct("=BBHI")
_RSRC_REGISTER: Final = struct.Struct("=IIQQQ")
_U32: Final = 0xFFFFFFFF
_U64: Final = 0xFFFFFFFFFFFFFFFF

assert _SQE.size == 64 and _CQE.size == 16 and _PARAMS.size == 120

#: Setting this environment variable to a reason makes :func:`probe` report io_uring as
#: unavailable with that reason (to test the fallback on machines where it works).
FORCE_UNAVAILABLE_ENV: Final = "AIODBOX_URING_FORCE_UNAVAILABLE"

#: Buffers the kernel may write into (reads, statx).
ReadBuffer: TypeAlias = "ctypes.Array[ctypes.c_char] | bytearray | memoryview"
#: Data the kernel reads (writes).
WriteData: TypeAlias = "bytes | bytearray | memoryview"

T = TypeVar("T")


class UringUnavailable(RuntimeError):
    """io_uring cannot be used in this process; ``reason`` says why, for humans.

    Attributes:
        reason: why (library or syscall missing, blocked by policy, wrong architecture,
            kernel too old).
        errno: the errno of the failing syscall, when there was one.
    """

    def __init__(self, reason: str, errno: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.errno = errno


class RingFullError(RuntimeError):
    """More operations outstanding than the ring has entries (a caller bug)."""


class StrayCompletionError(RuntimeError, Generic[T]):
    """The kernel posted completions whose ``user_data`` matches no operation.

    Never expected (it would mean a corrupted ring); the ring is no longer trustworthy.

    Attributes:
        stray: ``(user_data, res)`` of each unknown completion.
        completions: the valid completions reaped in the same call, to deliver anyway.
    """

    def __init__(self, stray: list[tuple[int, int]], completions: list[tuple[T, int, int]]):
        super().__init__(f"io_uring completions for unknown user_data (user_data, res): {stray}")
        self.stray = stray
        self.completions = completions


# --- syscalls ---------------------------------------------------------------------------


class _Syscalls:
    """Typed ``syscall(2)`` entry points for the three io_uring syscalls.

    ``syscall`` is variadic; on x86-64 the System V calling convention passes variadic
    integer arguments exactly like fixed ones, so one prototype per arity is correct.
    Calls go through :class:`ctypes.CDLL`, which releases the GIL while in the kernel.
    Each wrapper returns the result, or ``-errno`` on failure.
    """

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        c_long, c_uint, c_void_p = ctypes.c_long, ctypes.c_uint, ctypes.c_void_p
        setup = ctypes.CFUNCTYPE(c_long, c_long, c_uint, c_void_p, use_errno=True)
        enter = ctypes.CFUNCTYPE(
            c_long,
            c_long,
            c_uint,
            c_uint,
            c_uint,
            c_uint,
            c_void_p,
            ctypes.c_size_t,
            use_errno=True,
        )
        register = ctypes.CFUNCTYPE(
            c_long, c_long, c_uint, c_uint, c_void_p, c_uint, use_errno=True
        )
        self._setup = setup(("syscall", libc))
        self._enter = enter(("syscall", libc))
        self._register = register(("syscall", libc))

    @staticmethod
    def _result(ret: int) -> int:
        return -ctypes.get_errno() if ret == -1 else ret

    def setup(self, entries: int, params_addr: int) -> int:
        return self._result(self._setup(_NR_IO_URING_SETUP, entries, params_addr))

    def enter(self, fd: int, to_submit: int, min_complete: int, flags: int) -> int:
        return self._result(
            self._enter(_NR_IO_URING_ENTER, fd, to_submit, min_complete, flags, None, 0)
        )

    def register(self, fd: int, opcode: int, arg_addr: int | None, nr_args: int) -> int:
        return self._result(self._register(_NR_IO_URING_REGISTER, fd, opcode, arg_addr, nr_args))


@functools.cache
def _syscalls() -> _Syscalls:
    try:
        return _Syscalls()
    except (OSError, AttributeError) as exc:  # no dlopen(NULL), no syscall() in libc
        raise UringUnavailable(f"cannot reach syscall(2) through the C library: {exc}") from exc


# --- availability ------------------------------------------------------------------------


def platform_reason() -> str | None:
    """Why this platform cannot run the binding, or ``None`` when it can.

    Checks the OS, the CPU architecture (the ring protocol relies on x86-64 total store
    order, see the module docstring) and the pointer width.  Cheap; no syscalls.
    """
    if not sys.platform.startswith("linux"):
        return f"io_uring is a Linux interface (this is {sys.platform})"
    machine = platform.machine()
    if machine != "x86_64":
        return (
            f"io_uring binding refuses to run on {machine}: its ring protocol uses plain "
            "loads and stores, correct only under x86-64 total store order; other "
            "architectures need memory barriers Python cannot express"
        )
    if struct.calcsize("P") != 8:
        return "io_uring binding needs a 64-bit Python on x86_64"
    return None


def _setup_failure_reason(err: int) -> str:
    name = _errno.errorcode.get(err, str(err))
    if err == _errno.ENOSYS:
        return (
            f"io_uring_setup failed with {name}: the kernel has no io_uring (Linux < 5.1 or "
            "CONFIG_IO_URING=n) or a seccomp filter hides it"
        )
    if err in (_errno.EPERM, _errno.EACCES):
        try:
            with open("/proc/sys/kernel/io_uring_disabled", encoding="ascii") as f:
                disabled = f.read().strip()
        except OSError:
            disabled = "unknown"
        return (
            f"io_uring_setup failed with {name}: blocked by policy "
            f"(kernel.io_uring_disabled={disabled}, or a seccomp filter such as a "
            "container runtime's default profile)"
        )
    return f"io_uring_setup failed with {name}: {os.strerror(err)}"


def probe(*, refresh: bool = False) -> str | None:
    """Tell whether io_uring works here.

    Sets up a tiny ring, asks the kernel which opcodes it supports
    (``IORING_REGISTER_PROBE``) and tears the ring down.  The kernel part is cached for
    the process; the environment override and the platform check are not.

    Args:
        refresh: probe the kernel again instead of using the cached answer.

    Returns:
        ``None`` when io_uring can run every operation the engine needs; otherwise a
        human-readable reason: forced by ``AIODBOX_URING_FORCE_UNAVAILABLE``, not Linux,
        not x86-64, ``syscall(2)`` unreachable, ``io_uring_setup`` failing (``ENOSYS``:
        no io_uring; ``EPERM``: ``kernel.io_uring_disabled`` or seccomp), or opcodes the
        kernel does not support.  Never raises.
    """
    forced = os.environ.get(FORCE_UNAVAILABLE_ENV)
    if forced:
        return f"io_uring forced unavailable by {FORCE_UNAVAILABLE_ENV}: {forced}"
    reason = platform_reason()
    if reason is not None:
        return reason
    if refresh:
        _probe_kernel.cache_clear()
    return _probe_kernel()


@functools.cache
def _probe_kernel() -> str | None:
    try:
        ring: Ring[object] = Ring(2)
    except UringUnavailable as exc:
        return exc.reason
    except OSError as exc:
        return f"io_uring_setup failed: {exc}"
    try:
        supported = ring.probe_opcodes()
    except OSError as exc:
        return f"IORING_REGISTER_PROBE failed ({exc}); the kernel is older than Linux 5.6"
    finally:
        ring.close()
    missing = [op for op in REQUIRED_OPS if op not in supported]
    if missing:
        names = ", ".join(f"{op.name} (Linux {REQUIRED_OPS[op]})" for op in missing)
        return f"the kernel's io_uring lacks opcodes: {names}"
    return None


# --- buffers -----------------------------------------------------------------------------


def _bytes_addr(data: bytes) -> int:
    # A bytes object's buffer is immutable, lives as long as the object and is always
    # followed by a NUL byte (C API: PyBytes_AsString), so it doubles as a C string.
    return ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value or 0


def _path_addr(path: bytes) -> int:
    if b"\0" in path:
        raise ValueError("embedded null byte in path")
    return _bytes_addr(path)


def _writable_addr(buf: ReadBuffer) -> tuple[int, int, object]:
    """Return ``(address, size, keepalive)`` for a buffer the kernel will write into."""
    if isinstance(buf, ctypes.Array):
        return ctypes.addressof(buf), ctypes.sizeof(buf), buf
    view = memoryview(buf)
    if view.readonly or not view.c_contiguous:
        raise TypeError("read buffer must be writable and contiguous")
    arr = (ctypes.c_char * view.nbytes).from_buffer(view)  # pins the buffer
    return ctypes.addressof(arr), view.nbytes, arr


def _readable_addr(data: WriteData) -> tuple[int, int, object]:
    """Return ``(address, size, keepalive)`` for data the kernel will read."""
    if isinstance(data, bytes):
        return _bytes_addr(data), len(data), data
    view = memoryview(data)
    if view.readonly or not view.c_contiguous:
        copy = view.tobytes()
        return _bytes_addr(copy), len(copy), copy
    arr = (ctypes.c_char * view.nbytes).from_buffer(view)
    return ctypes.addressof(arr), view.nbytes, arr


def _map(fd: int, size: int, offset: int) -> mmap.mmap:
    return mmap.mmap(
        fd,
        size,
        flags=mmap.MAP_SHARED | mmap.MAP_POPULATE,
        prot=mmap.PROT_READ | mmap.PROT_WRITE,
        offset=offset,
    )


# --- the ring ----------------------------------------------------------------------------


class Ring(Generic[T]):
    """One io_uring instance: SQ/CQ rings mapped into this process.

    ``T`` is the type of the caller's per-operation token handed back by :meth:`reap`.
    Not thread-safe; use it from one thread.

    Attributes:
        fd: the ring's file descriptor (close-on-exec).
        sq_entries: submission queue size (the requested size rounded up to a power of 2).
        cq_entries: completion queue size (twice ``sq_entries``).
        features: the kernel's ``IORING_FEAT_*`` bits.
        peak_in_flight: the most operations ever outstanding at once (prepared, not reaped).
    """

    def __init__(self, entries: int = 256) -> None:
        """Set up a ring with at least ``entries`` submission entries.

        Raises:
            UringUnavailable: the platform or kernel cannot run io_uring here.
            ValueError: ``entries`` is outside 1..32768.
            OSError: another setup failure (``EMFILE``, ``ENOMEM``...).
        """
        self._closed = True
        reason = platform_reason()
        if reason is not None:
            raise UringUnavailable(reason)
        if not 1 <= entries <= 32768:
            raise ValueError(f"ring entries must be within 1..32768, not {entries}")
        sys_ = _syscalls()
        params = ctypes.create_string_buffer(_PARAMS.size)
        _PARAMS.pack_into(params, 0, 0, 0, _IORING_SETUP_SUBMIT_ALL, *([0] * 25))
        fd = sys_.setup(entries, ctypes.addressof(params))
        if fd == -_errno.EINVAL:  # kernels before 5.18 reject IORING_SETUP_SUBMIT_ALL
            ctypes.memset(params, 0, _PARAMS.size)
            fd = sys_.setup(entries, ctypes.addressof(params))
        if fd < 0:
            err = -fd
            if err in (_errno.ENOSYS, _errno.EPERM, _errno.EACCES):
                raise UringUnavailable(_setup_failure_reason(err), err)
            raise OSError(err, f"io_uring_setup: {os.strerror(err)}")
        self._sys = sys_
        self.fd = fd
        self._maps: list[mmap.mmap] = []
        try:
            self._map_rings(_PARAMS.unpack_from(params, 0))
        except BaseException:
            self._release_maps()
            os.close(fd)
            raise
        self._owners: dict[int, tuple[T, object]] = {}
        self._next_user_data = 1
        self.peak_in_flight = 0
        self._closed = False

    def _map_rings(self, p: tuple[int, ...]) -> None:
        sq_entries, cq_entries, _flags, _cpu, _idle, features = p[:6]
        sq_off, cq_off = p[10:19], p[19:28]
        # io_sqring_offsets: head tail ring_mask ring_entries flags dropped array
        # io_cqring_offsets: head tail ring_mask ring_entries overflow cqes flags
        sq_size = sq_off[6] + sq_entries * 4
        cq_size = cq_off[5] + cq_entries * _CQE.size
        if features & IORING_FEAT_SINGLE_MMAP:
            sq_map = cq_map = _map(self.fd, max(sq_size, cq_size), _IORING_OFF_SQ_RING)
            self._maps.append(sq_map)
        else:
            sq_map = _map(self.fd, sq_size, _IORING_OFF_SQ_RING)
            self._maps.append(sq_map)
            cq_map = _map(self.fd, cq_size, _IORING_OFF_CQ_RING)
            self._maps.append(cq_map)
        sqe_map = _map(self.fd, sq_entries * _SQE.size, _IORING_OFF_SQES)
        self._maps.append(sqe_map)

        u32 = ctypes.c_uint32
        self._sq_khead = u32.from_buffer(sq_map, sq_off[0])
        self._sq_ktail = u32.from_buffer(sq_map, sq_off[1])
        self._sq_kflags = u32.from_buffer(sq_map, sq_off[4])
        self._cq_khead = u32.from_buffer(cq_map, cq_off[0])
        self._cq_ktail = u32.from_buffer(cq_map, cq_off[1])
        self._cq_koverflow = u32.from_buffer(cq_map, cq_off[4])
        self._sq_mask = u32.from_buffer(sq_map, sq_off[2]).value
        self._cq_mask = u32.from_buffer(cq_map, cq_off[2]).value
        if (
            u32.from_buffer(sq_map, sq_off[3]).value != sq_entries
            or u32.from_buffer(cq_map, cq_off[3]).value != cq_entries
            or self._sq_mask != sq_entries - 1
            or self._cq_mask != cq_entries - 1
        ):
            raise OSError(_errno.EINVAL, "io_uring ring layout is not what the ABI promises")
        # Identity-map the SQ index array once: slot i always holds sqes[i].
        struct.pack_into(f"={sq_entries}I", sq_map, sq_off[6], *range(sq_entries))
        self._sqes = memoryview(sqe_map)
        self._cqes = memoryview(cq_map)[cq_off[5] : cq_off[5] + cq_entries * _CQE.size]
        self._sq_tail = self._sq_ktail.value
        self._hows = ctypes.create_string_buffer(sq_entries * _OPEN_HOW.size)
        self._hows_addr = ctypes.addressof(self._hows)
        self.sq_entries = sq_entries
        self.cq_entries = cq_entries
        self.features = features

    def _release_maps(self) -> None:
        for name in (
            "_sq_khead",
            "_sq_ktail",
            "_sq_kflags",
            "_cq_khead",
            "_cq_ktail",
            "_cq_koverflow",
        ):
            self.__dict__.pop(name, None)
        for name in ("_sqes", "_cqes"):
            view = self.__dict__.pop(name, None)
            if isinstance(view, memoryview):
                view.release()
        for m in self._maps:
            m.close()
        self._maps.clear()

    # --- state ---------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has run."""
        return self._closed

    @property
    def in_flight(self) -> int:
        """Operations prepared and not yet reaped (their buffers are still kept alive)."""
        return len(self._owners)

    @property
    def sq_space(self) -> int:
        """Free submission slots (0 once closed)."""
        if self._closed:
            return 0
        return self.sq_entries - ((self._sq_tail - self._sq_khead.value) & _U32)

    @property
    def unsubmitted(self) -> int:
        """Prepared SQEs the kernel has not consumed yet (0 once closed)."""
        if self._closed:
            return 0
        return (self._sq_tail - self._sq_khead.value) & _U32

    @property
    def cq_overflow(self) -> int:
        """The kernel's count of completions it dropped (stays 0 with IORING_FEAT_NODROP)."""
        return 0 if self._closed else self._cq_koverflow.value

    # --- preparation ---------------------------------------------------------------------

    def _push(
        self,
        token: T,
        keep: object,
        opcode: int,
        fd: int,
        off: int,
        addr: int,
        length: int,
        op_flags: int,
        sqe_flags: int,
        file_index: int = 0,
    ) -> int:
        if self._closed:
            raise ValueError("io_uring ring is closed")
        tail = self._sq_tail
        if (tail - self._sq_khead.value) & _U32 >= self.sq_entries:
            raise RingFullError(f"all {self.sq_entries} submission entries are in use")
        user_data = self._next_user_data
        self._next_user_data = user_data + 1
        _SQE.pack_into(
            self._sqes,
            (tail & self._sq_mask) * 64,
            opcode,
            sqe_flags,
            0,
            fd,
            off & _U64,
            addr,
            length,
            op_flags,
            user_data,
            0,
            0,
            file_index,
            0,
            0,
        )
        self._sq_tail = (tail + 1) & _U32
        owners = self._owners
        owners[user_data] = (token, keep)
        self.peak_in_flight = max(self.peak_in_flight, len(owners))
        return user_data

    def prep_nop(self, token: T, *, sqe_flags: int = 0) -> int:
        """Prepare a no-op (completes with 0).  Returns the ``user_data``."""
        return self._push(token, None, Op.NOP, -1, 0, 0, 0, 0, sqe_flags)

    def prep_openat(
        self,
        token: T,
        path: bytes,
        flags: int,
        mode: int,
        *,
        dfd: int = AT_FDCWD,
        file_slot: int | None = None,
        sqe_flags: int = 0,
    ) -> int:
        """Prepare ``openat(dfd, path, flags, mode)``.

        With ``file_slot``, the file goes into that slot of the registered file table (a
        direct descriptor, see :meth:`register_files_sparse`) and the CQE carries 0;
        ``O_CLOEXEC`` must then not be set.  Otherwise the CQE carries the new fd.
        """
        index = 0 if file_slot is None else file_slot + 1
        return self._push(
            token, path, Op.OPENAT, dfd, 0, _path_addr(path), mode, flags, sqe_flags, index
        )

    def prep_openat2(
        self,
        token: T,
        path: bytes,
        flags: int,
        mode: int,
        resolve: int,
        *,
        dfd: int = AT_FDCWD,
        file_slot: int | None = None,
        sqe_flags: int = 0,
    ) -> int:
        """Prepare ``openat2(dfd, path, {flags, mode, resolve})``.

        ``resolve`` takes ``RESOLVE_*`` bits: with ``RESOLVE_BENEATH`` the kernel refuses
        (``EXDEV``) any resolution that leaves ``dfd``, through ``..`` or a symlink.
        ``mode`` must be 0 unless ``flags`` has ``O_CREAT`` or ``O_TMPFILE`` (the kernel
        is strict about it).  ``file_slot`` works as for :meth:`prep_openat`.
        """
        # Each SQE slot has its own open_how: the kernel copies it when it consumes the
        # SQE (prep runs at submission), and a slot is reused only after that.
        if self._closed:
            raise ValueError("io_uring ring is closed")
        tail = self._sq_tail
        if (tail - self._sq_khead.value) & _U32 >= self.sq_entries:  # (before touching it)
            raise RingFullError(f"all {self.sq_entries} submission entries are in use")
        at = (tail & self._sq_mask) * _OPEN_HOW.size
        _OPEN_HOW.pack_into(self._hows, at, flags, mode, resolve)
        index = 0 if file_slot is None else file_slot + 1
        return self._push(
            token,
            path,
            Op.OPENAT2,
            dfd,
            self._hows_addr + at,
            _path_addr(path),
            _OPEN_HOW.size,
            0,
            sqe_flags,
            index,
        )

    def prep_read(
        self,
        token: T,
        fd: int,
        buf: ReadBuffer,
        offset: int,
        *,
        nbytes: int | None = None,
        sqe_flags: int = 0,
    ) -> int:
        """Prepare ``pread(fd, buf, nbytes or len(buf), offset)``; ``offset=-1``: file position.

        With ``IOSQE_FIXED_FILE`` in ``sqe_flags``, ``fd`` is a registered file slot.
        """
        addr, size, keep = _writable_addr(buf)
        length = size if nbytes is None else nbytes
        if not 0 <= length <= size:
            raise ValueError(f"nbytes {length} does not fit the {size}-byte buffer")
        length = min(length, MAX_RW_COUNT)
        return self._push(token, keep, Op.READ, fd, offset, addr, length, 0, sqe_flags)

    def prep_write(
        self, token: T, fd: int, data: WriteData, offset: int, *, sqe_flags: int = 0
    ) -> int:
        """Prepare ``pwrite(fd, data, offset)`` (at most ``MAX_RW_COUNT`` bytes)."""
        addr, size, keep = _readable_addr(data)
        length = min(size, MAX_RW_COUNT)
        return self._push(token, keep, Op.WRITE, fd, offset, addr, length, 0, sqe_flags)

    def prep_fsync(self, token: T, fd: int, *, datasync: bool = False, sqe_flags: int = 0) -> int:
        """Prepare ``fsync(fd)``, or ``fdatasync(fd)`` with ``datasync``."""
        op_flags = _IORING_FSYNC_DATASYNC if datasync else 0
        return self._push(token, None, Op.FSYNC, fd, 0, 0, 0, op_flags, sqe_flags)

    def prep_close(self, token: T, fd: int, *, sqe_flags: int = 0) -> int:
        """Prepare ``close(fd)``."""
        return self._push(token, None, Op.CLOSE, fd, 0, 0, 0, 0, sqe_flags)

    def prep_close_direct(self, token: T, file_slot: int, *, sqe_flags: int = 0) -> int:
        """Prepare closing registered file slot ``file_slot`` (a direct descriptor)."""
        return self._push(token, None, Op.CLOSE, 0, 0, 0, 0, 0, sqe_flags, file_slot + 1)

    def prep_ftruncate(self, token: T, fd: int, length: int, *, sqe_flags: int = 0) -> int:
        """Prepare ``ftruncate(fd, length)`` (``IORING_OP_FTRUNCATE``, Linux 6.9)."""
        return self._push(token, None, Op.FTRUNCATE, fd, length, 0, 0, 0, sqe_flags)

    def prep_statx(
        self,
        token: T,
        path: bytes,
        buf: ctypes.Array[ctypes.c_char],
        *,
        dfd: int = AT_FDCWD,
        flags: int = 0,
        mask: int = STATX_BASIC_STATS,
        sqe_flags: int = 0,
    ) -> int:
        """Prepare ``statx(dfd, path, flags, mask, buf)``; ``buf`` holds >= 256 bytes."""
        if ctypes.sizeof(buf) < 256:
            raise ValueError("a struct statx needs 256 bytes")
        keep = (path, buf)
        addr = _path_addr(path)
        return self._push(
            token, keep, Op.STATX, dfd, ctypes.addressof(buf), addr, mask, flags, sqe_flags
        )

    def prep_renameat(
        self,
        token: T,
        old: bytes,
        new: bytes,
        *,
        old_dfd: int = AT_FDCWD,
        new_dfd: int = AT_FDCWD,
        flags: int = 0,
        sqe_flags: int = 0,
    ) -> int:
        """Prepare ``renameat2(old_dfd, old, new_dfd, new, flags)``."""
        old_addr, new_addr = _path_addr(old), _path_addr(new)
        return self._push(
            token,
            (old, new),
            Op.RENAMEAT,
            old_dfd,
            new_addr,
            old_addr,
            new_dfd & _U32,
            flags,
            sqe_flags,
        )

    def prep_linkat(
        self,
        token: T,
        old: bytes,
        new: bytes,
        *,
        old_dfd: int = AT_FDCWD,
        new_dfd: int = AT_FDCWD,
        flags: int = 0,
        sqe_flags: int = 0,
    ) -> int:
        """Prepare ``linkat(old_dfd, old, new_dfd, new, flags)``."""
        old_addr, new_addr = _path_addr(old), _path_addr(new)
        return self._push(
            token,
            (old, new),
            Op.LINKAT,
            old_dfd,
            new_addr,
            old_addr,
            new_dfd & _U32,
            flags,
            sqe_flags,
        )

    def prep_unlinkat(
        self, token: T, path: bytes, *, dfd: int = AT_FDCWD, flags: int = 0, sqe_flags: int = 0
    ) -> int:
        """Prepare ``unlinkat(dfd, path, flags)`` (``AT_REMOVEDIR`` for a directory)."""
        return self._push(token, path, Op.UNLINKAT, dfd, 0, _path_addr(path), 0, flags, sqe_flags)

    def prep_mkdirat(
        self, token: T, path: bytes, mode: int, *, dfd: int = AT_FDCWD, sqe_flags: int = 0
    ) -> int:
        """Prepare ``mkdirat(dfd, path, mode)``."""
        return self._push(token, path, Op.MKDIRAT, dfd, 0, _path_addr(path), mode, 0, sqe_flags)

    # --- submission and completion -------------------------------------------------------

    def submit(self, wait_nr: int = 0) -> int:
        """Publish every prepared SQE and hand them to the kernel in one syscall.

        Args:
            wait_nr: also block until at least this many completions are available
                (0 for the event loop: never blocks on I/O).

        Returns:
            How many SQEs the kernel consumed (fewer than prepared if it ran short of
            memory; the rest stay queued for the next call).

        Raises:
            OSError: ``io_uring_enter`` failed (``EAGAIN``/``EBUSY``: retry later).
        """
        if self._closed:
            raise ValueError("io_uring ring is closed")
        self._sq_ktail.value = self._sq_tail  # release: the SQE stores happened before
        pending = (self._sq_tail - self._sq_khead.value) & _U32
        if pending == 0 and wait_nr == 0:
            return 0
        flags = _IORING_ENTER_GETEVENTS if wait_nr else 0
        while True:
            ret = self._sys.enter(self.fd, pending, wait_nr, flags)
            if ret != -_errno.EINTR:
                break
        if ret < 0:
            raise OSError(-ret, f"io_uring_enter: {os.strerror(-ret)}")
        return ret

    def reap(self, max_count: int | None = None) -> list[tuple[T, int, int]]:
        """Collect available completions, without blocking.

        Args:
            max_count: collect at most this many (the rest stay in the ring; see
                :attr:`completions_ready`), to bound the work of one call.

        Returns:
            ``(token, res, cqe_flags)`` per completion, in completion order; ``res`` is
            the syscall result or ``-errno``.  The keepalive of each is released.

        Raises:
            StrayCompletionError: a completion matched no operation (ring corrupted).
        """
        if self._closed:
            return []
        out: list[tuple[T, int, int]] = []
        owners = self._owners
        mask = self._cq_mask
        cqes = self._cqes
        unpack = _CQE.unpack_from
        stray: list[tuple[int, int]] = []
        room = _U32 if max_count is None else max_count
        while True:
            head = self._cq_khead.value
            tail = self._cq_ktail.value  # acquire: CQE loads below come after
            count = min((tail - head) & _U32, room)
            for i in range(count):
                user_data, res, cflags = unpack(cqes, ((head + i) & mask) * 16)
                entry = owners.pop(user_data, None)
                if entry is None:
                    stray.append((user_data, res))
                else:
                    out.append((entry[0], res, cflags))
            if count:
                self._cq_khead.value = (head + count) & _U32  # release: slots reusable
                room -= count
            if stray:
                raise StrayCompletionError(stray, out)
            if not room or not self._sq_kflags.value & _IORING_SQ_CQ_OVERFLOW:
                return out
            # The kernel parked completions on its overflow list; have it flush them.
            self._sys.enter(self.fd, 0, 0, _IORING_ENTER_GETEVENTS)

    @property
    def completions_ready(self) -> bool:
        """Whether :meth:`reap` would find something (in the CQ or the overflow list)."""
        if self._closed:
            return False
        if (self._cq_ktail.value - self._cq_khead.value) & _U32:
            return True
        return bool(self._sq_kflags.value & _IORING_SQ_CQ_OVERFLOW)

    # --- registration --------------------------------------------------------------------

    def _register(self, opcode: int, arg_addr: int | None, nr_args: int, what: str) -> None:
        ret = self._sys.register(self.fd, opcode, arg_addr, nr_args)
        if ret < 0:
            raise OSError(-ret, f"io_uring_register({what}): {os.strerror(-ret)}")

    def register_eventfd(self, efd: int) -> None:
        """Have the kernel signal eventfd ``efd`` whenever it posts a completion."""
        arg = ctypes.c_int32(efd)
        self._register(_IORING_REGISTER_EVENTFD, ctypes.addressof(arg), 1, "eventfd")

    def unregister_eventfd(self) -> None:
        """Stop signalling the registered eventfd."""
        self._register(_IORING_UNREGISTER_EVENTFD, None, 0, "unregister eventfd")

    def register_files_sparse(self, count: int) -> bool:
        """Register an empty table of ``count`` direct-descriptor slots.

        Returns:
            ``False`` when the kernel cannot (before Linux 5.19); direct descriptors are
            then unavailable.
        """
        arg = ctypes.create_string_buffer(_RSRC_REGISTER.size)
        _RSRC_REGISTER.pack_into(arg, 0, count, _IORING_RSRC_REGISTER_SPARSE, 0, 0, 0)
        ret = self._sys.register(
            self.fd, _IORING_REGISTER_FILES2, ctypes.addressof(arg), _RSRC_REGISTER.size
        )
        return ret >= 0

    def probe_opcodes(self) -> frozenset[int]:
        """The opcodes this kernel supports (``IORING_REGISTER_PROBE``).

        Raises:
            OSError: the kernel cannot probe (before Linux 5.6).
        """
        size = _PROBE_HEADER.size + _PROBE_OPS * _PROBE_OP.size
        buf = ctypes.create_string_buffer(size)
        self._register(_IORING_REGISTER_PROBE, ctypes.addressof(buf), _PROBE_OPS, "probe")
        _last_op, ops_len = _PROBE_HEADER.unpack_from(buf, 0)[:2]
        supported = set()
        for i in range(ops_len):
            op, _resv, flags, _resv2 = _PROBE_OP.unpack_from(
                buf, _PROBE_HEADER.size + i * _PROBE_OP.size
            )
            if flags & _IO_URING_OP_SUPPORTED:
                supported.add(op)
        return frozenset(supported)

    # --- teardown ------------------------------------------------------------------------

    def detach_keepalives(self) -> dict[int, tuple[T, object]]:
        """Hand over the tokens and buffers of every outstanding operation.

        For a caller that must close the ring while the kernel may still use them: keep
        the returned dict alive for the rest of the process.
        """
        owners, self._owners = self._owners, {}
        return owners

    def close(self) -> None:
        """Unmap the rings and close the ring fd (the kernel then cancels what is left).

        Buffers of operations still outstanding are released with the ring's references;
        call :meth:`detach_keepalives` first if any are.  Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        self._release_maps()
        os.close(self.fd)

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"fd={self.fd} in_flight={self.in_flight}"
        return f"<Ring entries={getattr(self, 'sq_entries', '?')} {state}>"
