"""FS path rules, checked without touching the disk.

FS paths are relative and ``/``-separated.  ``normalize`` rejects what could escape a
backend's root lexically (absolute paths, ``..``, NUL); backends that have real
directories additionally check symlinks when they resolve a path.
"""

from __future__ import annotations

import errno
import os

from aiodbox.fs.errors import FsError, FsPermission
from aiodbox.random_ids import random_hex

TEMP_PREFIX = ".aiodbox-tmp."
"""File names starting with this are uncommitted creates; ``iterate`` hides them."""


def normalize(op: str, path: str, *, allow_root: bool = False) -> str:
    """Return ``path`` in canonical form (``a/b/c``).

    Args:
        op: the operation, for the error message.
        path: a relative path; empty components and ``.`` are dropped.
        allow_root: accept ``""`` (the root itself), e.g. for ``iterate``.

    Raises:
        FsPermission: the path is absolute, contains ``..`` or NUL, or is empty.
    """
    if (  # already canonical (the usual case, on every read): no list to build
        path
        and path[0] not in "/."
        and path[-1] not in "/."
        and "//" not in path
        and "/." not in path
        and "\x00" not in path
    ):
        return path
    if "\x00" in path:
        raise FsPermission(op, path, errno.EACCES, "NUL byte in path")
    if path.startswith("/"):
        raise FsPermission(op, path, errno.EACCES, "absolute paths are refused")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise FsPermission(op, path, errno.EACCES, "'..' would leave the FS root")
    if not parts and not allow_root:
        raise FsPermission(op, path, errno.EACCES, "empty path")
    return "/".join(parts)


def split(path: str) -> tuple[str, str]:
    """Split a normalized path into (directory, file name); the directory may be ""."""
    head, _, tail = path.rpartition("/")
    return head, tail


def join(directory: str, name: str) -> str:
    """Join a normalized directory and a bare name."""
    return f"{directory}/{name}" if directory else name


def check_filename(op: str, path: str, filename: str) -> None:
    """Check that ``filename`` (given to ``commit``) is a bare file name.

    Raises:
        FsError: EINVAL when it contains ``/``, is ``.``/``..``, empty, or a temp name.
    """
    if not filename or "/" in filename or filename in (".", "..") or "\x00" in filename:
        raise FsError(op, path, errno.EINVAL, f"invalid file name {filename!r}")
    if filename.startswith(TEMP_PREFIX):
        raise FsError(op, path, errno.EINVAL, "file names may not use the temp prefix")


def temp_name(final_name: str, pid: int) -> str:
    """A temp file name for ``final_name``: recognisable, unique, names the owning pid."""
    return f"{TEMP_PREFIX}{pid}.{random_hex(6)}.{final_name}"


def temp_owner_pid(name: str) -> int | None:
    """The pid recorded in a temp file name, or None if ``name`` is not a temp name."""
    if not name.startswith(TEMP_PREFIX):
        return None
    pid, _, _ = name[len(TEMP_PREFIX) :].partition(".")
    return int(pid) if pid.isdigit() else None


def pid_alive(pid: int) -> bool:
    """True if a process with ``pid`` exists (a temp file's or a pending save's owner)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_temp(name: str, age: float, older_than: float) -> bool:
    """True if ``name`` is a temp file that ``clean_temp`` may remove: ``age`` seconds
    old and either older than ``older_than`` or left by a process that is gone."""
    pid = temp_owner_pid(name)
    return pid is not None and (age >= older_than or not pid_alive(pid))
