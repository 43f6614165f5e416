"""Open paths strictly beneath a root directory (blocking; call from worker threads).

Linux ≥ 5.6 has ``openat2(2)`` with ``RESOLVE_BENEATH``: the kernel resolves the path
relative to the root's descriptor and refuses ``..`` escapes and symlinks that lead out,
in one system call and without the check-then-use race of ``realpath``.  Python has no
binding, so a small ctypes call does it (ctypes releases the GIL during the call).  Where
``openat2`` is missing (old kernel, seccomp), a ``realpath`` check before ``open`` is the
fallback.  Every other operation then works relative to a directory descriptor obtained
this way (``unlinkat``, ``renameat``, ``linkat``, ``mkdirat`` via ``dir_fd=``).
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import stat as stat_mod
from collections.abc import Callable

from aiodbox.fs.api import Perms
from aiodbox.fs.errors import FsPermission

_SYS_OPENAT2 = 437  # the same number on every architecture (new-style syscall table)
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_BENEATH = 0x08
_RESOLVE_CACHED = 0x20  # Linux >= 5.12: fail with EAGAIN rather than do I/O for the lookup
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_RWF_NOWAIT = getattr(os, "RWF_NOWAIT", 0)
_O_PATH = getattr(os, "O_PATH", 0)


class _OpenHow(ctypes.Structure):
    _fields_ = (
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    )


_CACHED_HOW = _OpenHow(
    os.O_RDONLY | _O_CLOEXEC, 0, _RESOLVE_BENEATH | _RESOLVE_NO_MAGICLINKS | _RESOLVE_CACHED
)
_CACHED_HOW_REF = ctypes.byref(_CACHED_HOW)  # constant: built once, read by the kernel only
_HOW_SIZE = ctypes.sizeof(_OpenHow)


def _load_syscall() -> Callable[..., int] | None:
    if platform.system() != "Linux":
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.syscall
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_long
    syscall: Callable[..., int] = fn
    return syscall


_syscall = _load_syscall()


def dir_mode(file_mode: int) -> int:
    """Directory mode for a file mode: add search (x) wherever read (r) is granted."""
    return file_mode | ((file_mode & 0o444) >> 2) | 0o700


class Beneath:
    """Opens FS-relative paths under ``root`` and nowhere else (thread-safe)."""

    def __init__(self, root: str, *, use_openat2: bool = True) -> None:
        self.root = os.path.abspath(root)
        self._root_fd: int | None = None
        self.use_openat2 = use_openat2 and _syscall is not None
        self.cached_opens = self.use_openat2
        """:meth:`open_cached` may succeed (cleared when the kernel lacks RESOLVE_CACHED)."""

    def root_fd(self, create: bool = False) -> int:
        """A descriptor of the root directory (created with parents if ``create``)."""
        fd = self._root_fd
        if fd is None:
            try:
                fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | _O_CLOEXEC)
            except FileNotFoundError:
                if not create:
                    raise
                os.makedirs(self.root, 0o700, exist_ok=True)
                fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | _O_CLOEXEC)
            self._root_fd = fd
        return fd

    def open(self, op: str, path: str, flags: int, mode: int = 0, create: bool = False) -> int:
        """``open`` the FS path ``path`` with ``flags``; raises ``FsPermission`` on escape."""
        root = self.root_fd(create)
        flags |= _O_CLOEXEC
        if self.use_openat2:
            assert _syscall is not None
            how = _OpenHow(
                flags,
                mode if flags & (os.O_CREAT | os.O_TMPFILE) else 0,
                _RESOLVE_BENEATH | _RESOLVE_NO_MAGICLINKS,
            )
            fd: int = _syscall(
                _SYS_OPENAT2, root, (path or ".").encode(), ctypes.byref(how), ctypes.sizeof(how)
            )
            if fd >= 0:
                return fd
            err = ctypes.get_errno()
            if err == errno.EXDEV:
                raise FsPermission(op, path, errno.EACCES, "the path leads outside the FS root")
            if err != errno.ENOSYS:
                raise OSError(err, os.strerror(err), path)
            self.use_openat2 = False
        full = os.path.join(self.root, path) if path else self.root
        real = os.path.realpath(full)
        real_root = os.path.realpath(self.root)
        if real != real_root and not real.startswith(real_root + os.sep):
            raise FsPermission(op, path, errno.EACCES, "the path leads outside the FS root")
        return os.open(full, flags, mode)

    def read_cached(self, path: str, limit: int) -> bytes | None:
        """The whole file ``path`` if it is entirely in the caches, read on the calling
        thread without I/O (see :func:`read_cached`); None if it is larger than ``limit``.

        Raises:
            BlockingIOError: anything is not cached (or any other failure).
        """
        return read_cached(self.open_cached(path), limit)

    def open_cached(self, path: str) -> int:
        """Open the FS path ``path`` read-only *without blocking*, or raise
        ``BlockingIOError``.

        ``openat2(RESOLVE_CACHED)`` succeeds only when every component of the path is in
        the kernel's lookup cache: no disk I/O, so this may run on the event loop (as a
        ``preadv(RWF_NOWAIT)`` page-cache read does).  Any failure (not cached, missing,
        escaping, a kernel without the flag) raises ``BlockingIOError``: the blocking
        :meth:`open` in a worker then decides, and reports errors properly.
        """
        root = self._root_fd
        if not self.cached_opens or root is None:
            raise BlockingIOError(errno.EAGAIN, "no cached open")
        assert _syscall is not None
        fd: int = _syscall(_SYS_OPENAT2, root, path.encode(), _CACHED_HOW_REF, _HOW_SIZE)
        if fd >= 0:
            return fd
        err = ctypes.get_errno()
        if err in (errno.EINVAL, errno.ENOSYS, errno.E2BIG):  # RESOLVE_CACHED unknown
            self.cached_opens = False
        raise BlockingIOError(errno.EAGAIN, "not in the lookup cache")

    def open_dir(self, op: str, path: str) -> int:
        """A descriptor of directory ``path`` (usable for ``dir_fd=`` and ``fsync``)."""
        return self.open(op, path, os.O_RDONLY | os.O_DIRECTORY)

    def makedirs(self, op: str, path: str, perms: Perms) -> int:
        """Create directory ``path`` and missing parents; return its descriptor."""
        try:
            return self.open(op, path, os.O_RDONLY | os.O_DIRECTORY, create=True)
        except FileNotFoundError:
            if not path:
                raise
        parent, _, name = path.rpartition("/")
        pfd = self.makedirs(op, parent, perms)
        try:
            mode = dir_mode(perms.mode)
            try:
                os.mkdir(name, mode, dir_fd=pfd)
                created = True
            except FileExistsError:
                created = False
            fd = self.open_dir(op, path)
        finally:
            os.close(pfd)
        if created:
            try:
                os.fchmod(fd, mode)
                if perms.gid is not None:
                    os.fchown(fd, -1, perms.gid)
            except BaseException:
                os.close(fd)
                raise
        return fd

    def close(self) -> None:
        """Close the cached root descriptor."""
        if self._root_fd is not None:
            os.close(self._root_fd)
            self._root_fd = None


def open_cached_at(root_fd: int, path: str) -> int:
    """``openat2(RESOLVE_CACHED | RESOLVE_BENEATH)`` of ``path`` below ``root_fd``.

    Raises:
        BlockingIOError: a component is not in the lookup cache, or any other failure.
    """
    if _syscall is None:
        raise BlockingIOError(errno.EAGAIN, "no openat2")
    fd: int = _syscall(_SYS_OPENAT2, root_fd, path.encode(), _CACHED_HOW_REF, _HOW_SIZE)
    if fd < 0:
        raise BlockingIOError(errno.EAGAIN, "not in the lookup cache")
    return fd


def read_cached(fd: int, limit: int) -> bytes | None:
    """Read the regular file open on ``fd`` whole if every byte is in the page cache,
    then close ``fd``; None if it is larger than ``limit``.

    Only non-blocking calls (``fstat``, ``preadv(RWF_NOWAIT)``), so the event loop may
    do it, as it does a page-cache ``pread``.

    Raises:
        BlockingIOError: not (all) cached, not a regular file, or any other failure: the
            caller's blocking path then reads it and reports errors properly.
    """
    try:
        st = os.fstat(fd)
        if not stat_mod.S_ISREG(st.st_mode):
            raise BlockingIOError(errno.EAGAIN, "not a regular file")
        if st.st_size > limit:
            return None
        buf = bytearray(st.st_size + 1)
        n = os.preadv(fd, [buf], 0, _RWF_NOWAIT)  # EAGAIN: not (all) in the page cache
        if n != st.st_size:  # partly cached, or it changed since the fstat
            raise BlockingIOError(errno.EAGAIN, "not all cached")
        del buf[n:]
        return bytes(buf)
    except OSError as e:
        if isinstance(e, BlockingIOError):
            raise
        raise BlockingIOError(errno.EAGAIN, str(e)) from e
    finally:
        os.close(fd)
