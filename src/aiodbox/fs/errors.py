"""Errors of the FS layer.

One root, :class:`FsError`, which is an :class:`OSError` carrying the operation, the path
and the errno.  Subclasses also inherit the matching builtin, so callers may catch either
``FsNotFound`` or plain ``FileNotFoundError``.  Use :func:`fs_error` to build the right
subclass from an errno or from an ``OSError`` raised by the operating system.
"""

from __future__ import annotations

import errno as _errno
import os


class FsError(OSError):
    """An FS operation failed.

    Attributes:
        op: the operation that failed ("open", "pread", "commit", "stat", ...).
        path: the path relative to the FS root ("" when the error is not about a path).
        errno: the POSIX error number (``errno.EIO`` when nothing better is known).
    """

    def __init__(self, op: str, path: str, err: int, detail: str | None = None) -> None:
        message = detail or os.strerror(err)
        super().__init__(err, f"{op} {path!r}: {message}" if path else f"{op}: {message}")
        self.op = op
        self.path = path
        self.filename = path or None

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.op, self.path, self.errno, self.strerror))


class FsNotFound(FsError, FileNotFoundError):
    """The path (or its directory) does not exist."""


class FsExists(FsError, FileExistsError):
    """The path exists (``CreateMode.FAIL_IF_EXISTS`` at commit, ``link``, ``mkdir``)."""


class FsPermission(FsError, PermissionError):
    """Access denied, or the path leads outside the FS root."""


class FsIsADirectory(FsError, IsADirectoryError):
    """A file operation was given a directory."""


class FsNotADirectory(FsError, NotADirectoryError):
    """A path component that must be a directory is not one."""


class FsNotEmpty(FsError):
    """A directory to remove is not empty."""


class FsNotSupported(FsError):
    """The backend does not support this operation (check its :class:`FsProperty` flags)."""


class FsClosed(FsError):
    """The handle was used after :meth:`FileHandle.close`."""


_BY_ERRNO: dict[int, type[FsError]] = {
    _errno.ENOENT: FsNotFound,
    _errno.EEXIST: FsExists,
    _errno.EACCES: FsPermission,
    _errno.EPERM: FsPermission,
    _errno.EISDIR: FsIsADirectory,
    _errno.ENOTDIR: FsNotADirectory,
    _errno.ENOTEMPTY: FsNotEmpty,
    _errno.ENOTSUP: FsNotSupported,
    _errno.EBADF: FsClosed,
}


def fs_error(op: str, path: str, cause: int | OSError, detail: str | None = None) -> FsError:
    """Build the :class:`FsError` subclass matching ``cause``.

    Args:
        op: the operation name.
        path: the FS-relative path.
        cause: an errno, or an ``OSError`` whose errno is used (an ``FsError`` is returned
            re-labelled with ``op`` and ``path``).
        detail: a message replacing ``os.strerror(errno)``.
    """
    err = cause if isinstance(cause, int) else (cause.errno or _errno.EIO)
    cls = _BY_ERRNO.get(err, FsError)
    if detail is None and isinstance(cause, FsError):
        detail = cause.strerror
    return cls(op, path, err, detail)
