"""Find the files of a Dovecot 2.3 sdbox/mdbox mail root (blocking; run it in a thread).

Theory of operation
===================

This is the only module of the Dovecot importer that touches the filesystem.
It uses plain blocking ``os``/``pathlib`` calls, so callers on an event loop
must run it in a worker thread (``asyncio.to_thread``).  It never writes.

A mail root (the directory of ``mail_location = sdbox:~/sdbox`` or
``mdbox:~/mdbox``, default ``fs`` layout, no ``INDEX=``/``ALT=``) looks like::

    <root>/
      mailboxes/<name>/dbox-Mails/      one per mailbox; <name> may contain '/'
          dovecot.index[.log[.2]]       the mailbox index
          u.<uid>                       sdbox only: one file per message
      storage/                          mdbox only
          dovecot.map.index[.log[.2]]   the map: map_uid -> m.N, offset, size
          m.<file_id>                   many messages per file
      dovecot.list.index[.log[.2]]      mailbox list index
      subscriptions                     subscribed names
      dovecot-uidvalidity               last UIDVALIDITY handed out

:func:`scan_dovecot_root` recognises the format (a ``storage/`` directory with
map files or ``m.N`` files means mdbox, otherwise ``mailboxes/`` with dbox
mailboxes means sdbox) and raises :class:`DovecotLayoutError` for anything
else.  The ``load_*`` helpers read the found files and hand the bytes to the
sans-IO parsers in :mod:`~aiodbox.importers.dovecot_index` and
:mod:`~aiodbox.importers.dovecot_list`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from aiodbox.importers.dovecot_index import (
    DovecotMailboxIndex,
    MdboxMap,
    read_mailbox_index,
    read_mdbox_map,
)
from aiodbox.importers.dovecot_list import (
    MailboxListEntry,
    decode_mutf7,
    parse_subscriptions,
    parse_uidvalidity_file,
    read_mailbox_list_index,
)

__all__ = [
    "DovecotIndexFiles",
    "DovecotLayoutError",
    "DovecotMailboxDir",
    "DovecotRoot",
    "load_mailbox_index",
    "load_mailbox_list",
    "load_mdbox_map",
    "load_subscriptions",
    "scan_dovecot_root",
]

MAILBOXES_DIR = "mailboxes"
MAILDIR_NAME = "dbox-Mails"
STORAGE_DIR = "storage"
INDEX_PREFIX = "dovecot.index"
MAP_INDEX_PREFIX = "dovecot.map.index"
LIST_INDEX_PREFIX = "dovecot.list.index"
SUBSCRIPTIONS_FILE = "subscriptions"
UIDVALIDITY_FILE = "dovecot-uidvalidity"
SEPARATOR = "/"


class DovecotLayoutError(Exception):
    """A path is not a (readable) Dovecot 2.3 sdbox or mdbox mail root.

    Attributes:
        path: The path that was examined.
        reason: What is wrong with it.
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(path, reason)
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass(frozen=True, slots=True)
class DovecotIndexFiles:
    """The files of one Dovecot index; absent ones are ``None``.

    Attributes:
        base: Path of the index file (``.../dovecot.index``), present or not.
        index: The index file, if it exists.
        log: ``<base>.log``, if it exists.
        log2: ``<base>.log.2``, if it exists.
    """

    base: Path
    index: Path | None
    log: Path | None
    log2: Path | None

    @property
    def exists(self) -> bool:
        """At least the index or its log exists."""
        return self.index is not None or self.log is not None

    def read(self) -> tuple[bytes | None, bytes | None, bytes | None]:
        """Read (index, log, log.2) contents, ``None`` for absent files."""
        return (
            _read_optional(self.index),
            _read_optional(self.log),
            _read_optional(self.log2),
        )


@dataclass(frozen=True, slots=True)
class DovecotMailboxDir:
    """A mailbox directory (``mailboxes/<name>/dbox-Mails``).

    Attributes:
        name: Mailbox name, ``/``-separated, modified UTF-7 decoded where valid.
        storage_name: The name exactly as on disk.
        path: The ``dbox-Mails`` directory.
        index: The mailbox index files.
        mail_files: sdbox: ``(uid, path)`` of every ``u.<uid>`` file, by uid;
            empty for mdbox.
    """

    name: str
    storage_name: str
    path: Path
    index: DovecotIndexFiles
    mail_files: tuple[tuple[int, Path], ...]


@dataclass(frozen=True, slots=True)
class DovecotRoot:
    """What :func:`scan_dovecot_root` found.

    Attributes:
        path: The mail root.
        storage: ``"sdbox"`` or ``"mdbox"``.
        mailboxes: Mailbox directories, sorted by name (INBOX first).
        map_index: mdbox: the map index files; ``None`` for sdbox.
        storage_files: mdbox: ``(file_id, path)`` of every ``storage/m.N``.
        list_index: The mailbox list index files (may not exist).
        subscriptions: The subscriptions file, if any.
        uidvalidity_file: ``dovecot-uidvalidity``, if any.
    """

    path: Path
    storage: Literal["sdbox", "mdbox"]
    mailboxes: tuple[DovecotMailboxDir, ...]
    map_index: DovecotIndexFiles | None
    storage_files: tuple[tuple[int, Path], ...]
    list_index: DovecotIndexFiles
    subscriptions: Path | None
    uidvalidity_file: Path | None

    def mailbox(self, name: str) -> DovecotMailboxDir | None:
        """Return the mailbox directory called ``name``, or ``None``."""
        for mbox in self.mailboxes:
            if mbox.name == name:
                return mbox
        return None

    @property
    def last_uidvalidity(self) -> int | None:
        """The value in ``dovecot-uidvalidity``, if the file exists."""
        if self.uidvalidity_file is None:
            return None
        return parse_uidvalidity_file(
            self.uidvalidity_file.read_bytes(), name=str(self.uidvalidity_file)
        )


def _read_optional(path: Path | None) -> bytes | None:
    return None if path is None else path.read_bytes()


def _is_file(path: Path) -> bool:
    return path.is_file() and not path.is_symlink()


def _index_files(base: Path) -> DovecotIndexFiles:
    def opt(p: Path) -> Path | None:
        return p if _is_file(p) else None

    return DovecotIndexFiles(
        base=base,
        index=opt(base),
        log=opt(base.with_name(base.name + ".log")),
        log2=opt(base.with_name(base.name + ".log.2")),
    )


def _numbered(directory: Path, prefix: str) -> tuple[tuple[int, Path], ...]:
    """``(n, path)`` of regular files called ``<prefix><n>`` in ``directory``."""
    found: list[tuple[int, Path]] = []
    with os.scandir(directory) as it:
        for entry in it:
            rest = entry.name[len(prefix) :]
            if (
                entry.name.startswith(prefix)
                and rest.isdecimal()
                and rest.isascii()
                and not rest.startswith("0")
                and entry.is_file(follow_symlinks=False)
            ):
                found.append((int(rest), Path(entry.path)))
    return tuple(sorted(found))


def _walk_mailboxes(mailboxes: Path) -> list[tuple[str, Path]]:
    """``(storage_name, dbox-Mails path)`` for every mailbox under ``mailboxes/``."""
    found: list[tuple[str, Path]] = []

    def walk(directory: Path, levels: tuple[str, ...]) -> None:
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            if not entry.is_dir(follow_symlinks=False):
                continue
            if entry.name == MAILDIR_NAME:
                if levels:
                    found.append((SEPARATOR.join(levels), Path(entry.path)))
                continue
            walk(Path(entry.path), (*levels, entry.name))

    walk(mailboxes, ())
    return found


def _name_key(name: str) -> tuple[bool, str]:
    return (name.upper() != "INBOX", name)


def _looks_like_root(path: Path) -> bool:
    return (path / MAILBOXES_DIR).is_dir() or (path / STORAGE_DIR).is_dir()


def scan_dovecot_root(path: str | os.PathLike[str]) -> DovecotRoot:
    """Recognise a Dovecot 2.3 sdbox or mdbox mail root and list its files.

    Args:
        path: The mail root (the directory ``mail_location`` names).

    Returns:
        The format and the files found.

    Raises:
        DovecotLayoutError: ``path`` is not a directory, cannot be read, or is
            not a Dovecot sdbox/mdbox root (the message says why, and suggests
            a subdirectory when ``path`` looks like a home directory).
    """
    root = Path(path)
    shown = str(root)
    if not root.exists():
        raise DovecotLayoutError(shown, "no such file or directory")
    if not root.is_dir():
        raise DovecotLayoutError(shown, "not a directory")
    try:
        return _scan(root)
    except OSError as exc:
        raise DovecotLayoutError(shown, f"cannot be read: {exc}") from exc


def _scan(root: Path) -> DovecotRoot:
    shown = str(root)
    mailboxes_dir = root / MAILBOXES_DIR
    storage_dir = root / STORAGE_DIR
    if not _looks_like_root(root):
        hints = sorted(p.name for p in root.iterdir() if p.is_dir() and _looks_like_root(p))
        hint = f"; did you mean {root / hints[0]}?" if hints else ""
        raise DovecotLayoutError(
            shown,
            f"not a Dovecot sdbox/mdbox mail root (no {MAILBOXES_DIR}/ or {STORAGE_DIR}/ "
            f"directory){hint}",
        )
    storage_files: tuple[tuple[int, Path], ...] = ()
    map_index: DovecotIndexFiles | None = None
    if storage_dir.is_dir():
        map_index = _index_files(storage_dir / MAP_INDEX_PREFIX)
        storage_files = _numbered(storage_dir, "m.")
        if not map_index.exists and not storage_files:
            map_index = None
    found = _walk_mailboxes(mailboxes_dir) if mailboxes_dir.is_dir() else []
    mailboxes: list[DovecotMailboxDir] = []
    any_sdbox_files = False
    for storage_name, mail_dir in found:
        files = _numbered(mail_dir, "u.")
        any_sdbox_files = any_sdbox_files or bool(files)
        name = SEPARATOR.join(_decode_level(level) for level in storage_name.split(SEPARATOR))
        mailboxes.append(
            DovecotMailboxDir(
                name=name,
                storage_name=storage_name,
                path=mail_dir,
                index=_index_files(mail_dir / INDEX_PREFIX),
                mail_files=files,
            )
        )
    storage: Literal["sdbox", "mdbox"]
    if map_index is not None:
        storage = "mdbox"
        if any_sdbox_files:
            raise DovecotLayoutError(
                shown, "has both mdbox storage/ and sdbox u.N message files; refusing to guess"
            )
        mailboxes = [
            DovecotMailboxDir(m.name, m.storage_name, m.path, m.index, ()) for m in mailboxes
        ]
    elif mailboxes:
        storage = "sdbox"
    else:
        raise DovecotLayoutError(
            shown,
            f"not a Dovecot sdbox/mdbox mail root (no {MAILBOXES_DIR}/<name>/{MAILDIR_NAME}/ "
            f"mailbox and no {STORAGE_DIR}/{MAP_INDEX_PREFIX} map)",
        )
    subs = root / SUBSCRIPTIONS_FILE
    uidv = root / UIDVALIDITY_FILE
    return DovecotRoot(
        path=root,
        storage=storage,
        mailboxes=tuple(sorted(mailboxes, key=lambda m: _name_key(m.name))),
        map_index=map_index,
        storage_files=storage_files,
        list_index=_index_files(root / LIST_INDEX_PREFIX),
        subscriptions=subs if _is_file(subs) else None,
        uidvalidity_file=uidv if _is_file(uidv) else None,
    )


def _decode_level(level: str) -> str:
    try:
        return decode_mutf7(level)
    except ValueError:
        return level


def load_mailbox_index(
    mailbox: DovecotMailboxDir, *, allow_partial_tail: bool = False
) -> DovecotMailboxIndex:
    """Read and replay a mailbox's ``dovecot.index`` + log.

    Args:
        mailbox: From :attr:`DovecotRoot.mailboxes`.
        allow_partial_tail: See :func:`aiodbox.importers.dovecot_index.parse_log`.

    Returns:
        The mailbox's index state.

    Raises:
        DovecotIndexError: The index files are damaged or missing.
        OSError: A file could not be read.
    """
    index, log, log2 = mailbox.index.read()
    return read_mailbox_index(
        index,
        log,
        log2=log2,
        name=str(mailbox.index.base),
        allow_partial_tail=allow_partial_tail,
    )


def load_mdbox_map(root: DovecotRoot, *, allow_partial_tail: bool = False) -> MdboxMap:
    """Read and replay the mdbox map of an mdbox root.

    Args:
        root: From :func:`scan_dovecot_root`; must be mdbox.
        allow_partial_tail: See :func:`aiodbox.importers.dovecot_index.parse_log`.

    Returns:
        The map.

    Raises:
        DovecotLayoutError: ``root`` is not an mdbox root.
        DovecotIndexError: The map files are damaged or missing.
        OSError: A file could not be read.
    """
    if root.map_index is None:
        raise DovecotLayoutError(str(root.path), "not an mdbox root (no storage/ map)")
    index, log, log2 = root.map_index.read()
    return read_mdbox_map(
        index,
        log,
        log2=log2,
        name=str(root.map_index.base),
        allow_partial_tail=allow_partial_tail,
    )


def load_mailbox_list(
    root: DovecotRoot, *, allow_partial_tail: bool = False
) -> tuple[MailboxListEntry, ...]:
    """Read the mailbox list index, or ``()`` if the root has none.

    Args:
        root: From :func:`scan_dovecot_root`.
        allow_partial_tail: See :func:`aiodbox.importers.dovecot_index.parse_log`.

    Returns:
        The list index nodes.

    Raises:
        DovecotIndexError: The list index files are damaged.
        OSError: A file could not be read.
    """
    if not root.list_index.exists:
        return ()
    index, log, log2 = root.list_index.read()
    return read_mailbox_list_index(
        index,
        log,
        log2=log2,
        name=str(root.list_index.base),
        separator=SEPARATOR,
        allow_partial_tail=allow_partial_tail,
    )


def load_subscriptions(root: DovecotRoot) -> tuple[str, ...]:
    """Subscribed mailbox names (modified UTF-7 decoded where valid), or ``()``.

    Args:
        root: From :func:`scan_dovecot_root`.

    Returns:
        The names, in file order.

    Raises:
        DovecotIndexError: The file is not UTF-8.
        OSError: The file could not be read.
    """
    if root.subscriptions is None:
        return ()
    names = parse_subscriptions(
        root.subscriptions.read_bytes(), separator=SEPARATOR, name=str(root.subscriptions)
    )
    return tuple(SEPARATOR.join(_decode_level(lv) for lv in n.split(SEPARATOR)) for n in names)
