"""The asynchronous filesystem API (DESIGN.md §3): ``open_fs(spec)`` and the contract.

See :mod:`aiodbox.fs.api` for the contract every backend implements.
"""

from __future__ import annotations

from aiodbox.fs.api import (
    FS,
    CreateMode,
    FileHandle,
    FsProperty,
    FsStat,
    FsyncPolicy,
    OpenMode,
    Perms,
    StagedFile,
)
from aiodbox.fs.errors import (
    FsClosed,
    FsError,
    FsExists,
    FsIsADirectory,
    FsNotADirectory,
    FsNotEmpty,
    FsNotFound,
    FsNotSupported,
    FsPermission,
    fs_error,
)
from aiodbox.fs.registry import FsSpecError, open_fs, parse_duration, register_backend

__all__ = [
    "FS",
    "CreateMode",
    "FileHandle",
    "FsClosed",
    "FsError",
    "FsExists",
    "FsIsADirectory",
    "FsNotADirectory",
    "FsNotEmpty",
    "FsNotFound",
    "FsNotSupported",
    "FsPermission",
    "FsProperty",
    "FsSpecError",
    "FsStat",
    "FsyncPolicy",
    "OpenMode",
    "Perms",
    "StagedFile",
    "fs_error",
    "open_fs",
    "parse_duration",
    "register_backend",
]
