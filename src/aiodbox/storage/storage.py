"""``Storage`` (from the config) → ``User`` (one index, the mailbox list).

Theory of operation
-------------------
A :class:`Storage` owns the FS stack built from ``[storage] fs`` (rooted at
``mail_root``) and hands out one :class:`User` per user name per process, so that every
connection of a user shares one index database and one view per open mailbox.

A user's files live under ``<mail_root>/<user>/``: each mailbox has a directory
``mailboxes/<mailbox GUID>/`` holding its ``dbox-box`` file (name and UIDVALIDITY, so
fsck can rebuild the list) and, for sdbox, its ``u.<uid>`` message files; mdbox keeps
messages in ``storage/m.<file_id>``.  Directories are named by GUID, not by mailbox name,
so a rename is one index transaction (an object store has no directory rename) and any
name is possible without escaping.  The index is ``<index_root>/<user>/index.sqlite``.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiodbox.config import StorageConfig
from aiodbox.fs import FS, CreateMode, FsNotFound, FsProperty, open_fs
from aiodbox.index.db import IndexDB
from aiodbox.random_ids import new_uuid4_hex
from aiodbox.storage import names
from aiodbox.storage.errors import (
    InvalidMailboxName,
    MailboxExists,
    MailboxHasChildren,
    MailboxNotFound,
    StorageError,
    UnsupportedBackend,
)
from aiodbox.storage.formats import MailFormat, make_format
from aiodbox.storage.mailbox import Mailbox
from aiodbox.storage.uid_order import UidOrder

if TYPE_CHECKING:
    import sqlite3


@dataclass(frozen=True, slots=True)
class MailboxInfo:
    """A mailbox as the list knows it."""

    id: int
    name: str
    guid: str
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    special_use: str | None


@dataclass(frozen=True, slots=True)
class MailboxStatus:
    """What IMAP STATUS reports."""

    messages: int
    uidnext: int
    uidvalidity: int
    unseen: int
    highestmodseq: int
    size: int
    deleted: int
    recent: int
    """Messages no session has claimed as ``\\Recent`` yet."""


_MAILBOX_COLUMNS = "id, name, guid, uidvalidity, uidnext, highestmodseq, special_use"


def _info(row: tuple[Any, ...]) -> MailboxInfo:
    return MailboxInfo(*row)


def new_guid() -> str:
    """A 128-bit GUID as 32 lowercase hex digits (Dovecot's GUID form)."""
    return new_uuid4_hex()


class Storage:
    """The mail store of one config; see the module docstring.

    Args:
        config: the ``[storage]`` settings.
        fs: an FS to use instead of building one from ``config.fs`` (tests).
    """

    def __init__(self, config: StorageConfig, fs: FS | None = None) -> None:
        self.config = config
        self.fs = fs or open_fs(
            config.fs,
            root=str(config.mail_root),
            io_threads=config.io_threads,
            fsync=config.fsync,
            readahead=config.readahead,
            nowait_reads=config.nowait_reads,
        )
        self.format_name = config.format
        if config.format == "mdbox":
            needed = FsProperty.LOCKS | FsProperty.APPEND
            if needed & self.fs.properties != needed:
                raise UnsupportedBackend(
                    f"mdbox needs an FS with locks and appends; {self.fs.name!r} has neither "
                    'or not both: use format = "sdbox" with this backend'
                )
        self.index_root = Path(config.index_root)
        self._users: dict[str, User] = {}
        self._opening: dict[str, asyncio.Future[User]] = {}

    def format(self, user: User) -> MailFormat:
        """The message-file format object for ``user``."""
        return make_format(self.format_name, user)

    async def user(self, name: str, *, create: bool = True) -> User:
        """The shared :class:`User` for ``name`` (its index is opened on first use).

        With ``create``, a user seen for the first time gets the default mailboxes
        (INBOX, Sent, Drafts, Trash, Junk, Archive).
        """
        user = self._users.get(name)
        if user is not None:
            return user
        pending = self._opening.get(name)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[User] = asyncio.get_running_loop().create_future()
        self._opening[name] = fut
        try:
            if not name or "/" in name or name in (".", "..") or "\x00" in name:
                raise ValueError(f"invalid user name {name!r}")
            db = await IndexDB.open(self.index_root / name / "index.sqlite")
            user = User(self, name, db)
            if create:
                await user.ensure_default_mailboxes()
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # retrieved here; waiters get it from the future
            raise
        finally:
            del self._opening[name]
        self._users[name] = user
        fut.set_result(user)
        return user

    async def close(self) -> None:
        """Close every user's index and the FS."""
        for user in list(self._users.values()):
            await user.close()
        self._users.clear()
        await self.fs.aclose()


class User:
    """One user's mailboxes; see the module docstring."""

    def __init__(self, storage: Storage, name: str, db: IndexDB) -> None:
        self.storage = storage
        self.name = name
        self.db = db
        self.fs = storage.fs
        self.format = storage.format(self)
        self.uid_order = UidOrder()
        """This process's transactions between reserving UIDs and making them visible."""
        self._mailboxes: dict[int, Mailbox] = {}
        self._mailbox_lock = asyncio.Lock()
        # name -> (info, the index's list_generation before it was read, when): which
        # mailbox a name means, for saving into it (see _identity)
        self._identities: dict[str, tuple[MailboxInfo, int, float]] = {}

    # ----------------------------------------------------------- paths

    def path(self, *parts: str) -> str:
        """The FS path of ``parts`` under this user's directory."""
        return "/".join((self.name, *parts))

    def mailbox_dir(self, guid: str) -> str:
        """The FS directory of a mailbox."""
        return self.path("mailboxes", guid)

    # ------------------------------------------------------ mailbox list

    async def list_mailboxes(self) -> list[MailboxInfo]:
        """All mailboxes, sorted by name."""

        def q(conn: sqlite3.Connection) -> list[MailboxInfo]:
            rows = conn.execute(f"SELECT {_MAILBOX_COLUMNS} FROM mailboxes ORDER BY name")
            return [_info(r) for r in rows]

        return await self.db.read(q)

    async def get_mailbox_info(self, name: str) -> MailboxInfo:
        """The mailbox called ``name``.  Raises ``MailboxNotFound``."""
        norm = names.normalize(name)

        def q(conn: sqlite3.Connection) -> MailboxInfo | None:
            row = conn.execute(
                f"SELECT {_MAILBOX_COLUMNS} FROM mailboxes WHERE name = ?", (norm,)
            ).fetchone()
            return _info(row) if row else None

        info = await self.db.read(q)
        if info is None:
            raise MailboxNotFound(f"mailbox {norm!r} does not exist")
        return info

    async def _identity(self, name: str) -> MailboxInfo:
        """:meth:`get_mailbox_info`, from a cache while no process changed the mailbox
        list since (see :attr:`IndexDB.list_generation`).  Only the identity fields
        (``id``, ``name``, ``guid``, ``uidvalidity``, ``special_use``) are current; for
        saving into the mailbox, which reads the rest from the index.

        A list change committed before this call is always seen (the process that made
        it wrote the marker before answering its client).
        """
        norm = names.normalize(name)
        generation = self.db.list_generation
        if generation is None:
            return await self.get_mailbox_info(norm)
        now = time.monotonic()
        cached = self._identities.get(norm)
        if cached is not None and cached[1] == generation and now - cached[2] < IDENTITY_TTL:
            return cached[0]
        info = await self.get_mailbox_info(norm)
        if len(self._identities) >= IDENTITY_CACHE_SIZE:
            self._identities.clear()
        self._identities[norm] = (info, generation, now)
        return info

    async def mailbox_list_changed(self) -> None:
        """After a committed change of the mailbox list: forget the names known here and
        tell other processes (:meth:`IndexDB.list_changed`)."""
        self._identities.clear()
        await self.db.list_changed()

    async def create_mailbox(
        self,
        name: str,
        special_use: str | None = None,
        *,
        guid: str | None = None,
        uidvalidity: int | None = None,
        uidnext: int = 1,
    ) -> MailboxInfo:
        """Create a mailbox (parents are not created: IMAP allows gaps in the hierarchy).

        ``guid``/``uidvalidity``/``uidnext`` are for imports that keep Dovecot's values.

        Raises:
            MailboxExists: the name is taken.
            InvalidMailboxName: the name is not valid.
        """
        norm = names.normalize(name)
        if special_use is not None and special_use not in names.SPECIAL_USES:
            raise InvalidMailboxName(f"{special_use} is not a special-use attribute")
        mbox_guid = guid or new_guid()
        now = time.time()

        def tx(conn: sqlite3.Connection) -> MailboxInfo:
            if conn.execute("SELECT 1 FROM mailboxes WHERE name = ?", (norm,)).fetchone():
                raise MailboxExists(f"mailbox {norm!r} exists already")
            validity = uidvalidity or _next_uidvalidity(conn)
            cur = conn.execute(
                "INSERT INTO mailboxes (name, guid, uidvalidity, uidnext, highestmodseq,"
                " special_use, created, first_recent_uid) VALUES (?, ?, ?, ?, 1, ?, ?, ?)",
                (norm, mbox_guid, validity, uidnext, special_use, now, uidnext),
            )
            assert cur.lastrowid is not None
            return MailboxInfo(cur.lastrowid, norm, mbox_guid, validity, uidnext, 1, special_use)

        info = await self.db.write(tx)
        await self.mailbox_list_changed()
        await self._write_box_file(info)
        return info

    async def _write_box_file(self, info: MailboxInfo) -> None:
        meta = {"name": info.name, "guid": info.guid, "uidvalidity": info.uidvalidity}
        await self.fs.write_file(
            f"{self.mailbox_dir(info.guid)}/dbox-box",
            json.dumps(meta).encode() + b"\n",
            CreateMode.REPLACE_IF_EXISTS,
        )

    async def ensure_default_mailboxes(self) -> None:
        """Create INBOX and the special-use folders if the user has no mailbox at all."""

        def count(conn: sqlite3.Connection) -> int:
            return int(conn.execute("SELECT count(*) FROM mailboxes").fetchone()[0])

        if await self.db.read(count):
            return
        for name, use in names.DEFAULT_MAILBOXES:
            try:
                await self.create_mailbox(name, use)
                if name != names.INBOX:
                    await self.subscribe(name)
            except MailboxExists:
                pass
        await self.subscribe(names.INBOX)

    async def delete_mailbox(self, name: str) -> None:
        """Delete a mailbox and its messages.

        Raises:
            MailboxNotFound: no such mailbox.
            MailboxHasChildren: it has child mailboxes (Dovecot refuses those too).
            InvalidMailboxName: INBOX cannot be deleted.
        """
        info = await self.get_mailbox_info(name)
        if info.name == names.INBOX:
            raise InvalidMailboxName("INBOX cannot be deleted")

        def tx(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
            like = info.name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            child = conn.execute(
                "SELECT 1 FROM mailboxes WHERE name LIKE ? ESCAPE '\\'", (like + "/%",)
            ).fetchone()
            if child:
                raise MailboxHasChildren(f"mailbox {info.name!r} has child mailboxes")
            rows = conn.execute(
                "SELECT uid, file_name, map_uid FROM messages WHERE mailbox_id = ?", (info.id,)
            ).fetchall()
            self.format.release_in_tx(conn, rows)
            conn.execute("DELETE FROM messages WHERE mailbox_id = ?", (info.id,))
            conn.execute("DELETE FROM expunged WHERE mailbox_id = ?", (info.id,))
            conn.execute("DELETE FROM pending WHERE mailbox_id = ?", (info.id,))
            conn.execute("DELETE FROM mailboxes WHERE id = ?", (info.id,))
            return rows

        await self.db.write(tx)
        await self.mailbox_list_changed()
        mbox = self._mailboxes.pop(info.id, None)
        if mbox is not None:
            mbox.mark_deleted()
        await self._remove_dir(self.mailbox_dir(info.guid))

    async def _remove_dir(self, directory: str) -> None:
        async for path in self.fs.iterate(directory):
            try:
                await self.fs.delete(path)
            except FsNotFound:
                pass
        if FsProperty.DIRECTORIES in self.fs.properties:
            try:
                await self.fs.rmdir(directory)
            except OSError:
                pass

    async def rename_mailbox(self, old: str, new: str) -> None:
        """Rename a mailbox and its children (one index transaction).

        Renaming INBOX moves its messages into a new mailbox and leaves INBOX empty
        (RFC 3501 §6.3.5).

        Raises:
            MailboxNotFound, MailboxExists, InvalidMailboxName.
        """
        info = await self.get_mailbox_info(old)
        new_norm = names.normalize(new)
        if info.name == names.INBOX:
            await self._rename_inbox(info, new_norm)
            return
        if new_norm == names.INBOX or names.is_child(new_norm, info.name):
            raise InvalidMailboxName(f"cannot rename {info.name!r} to {new_norm!r}")

        def tx(conn: sqlite3.Connection) -> list[MailboxInfo]:
            if conn.execute("SELECT 1 FROM mailboxes WHERE name = ?", (new_norm,)).fetchone():
                raise MailboxExists(f"mailbox {new_norm!r} exists already")
            rows = conn.execute(f"SELECT {_MAILBOX_COLUMNS} FROM mailboxes").fetchall()
            moved: list[MailboxInfo] = []
            for row in rows:
                mi = _info(row)
                if mi.name == info.name or names.is_child(mi.name, info.name):
                    target = new_norm + mi.name[len(info.name) :]
                    conn.execute("UPDATE mailboxes SET name = ? WHERE id = ?", (target, mi.id))
                    moved.append(_info((mi.id, target, *row[2:])))
                    conn.execute("DELETE FROM subscriptions WHERE name = ?", (mi.name,))
            return moved

        moved = await self.db.write(tx)
        await self.mailbox_list_changed()
        for mi in moved:
            await self._write_box_file(mi)
            mbox = self._mailboxes.get(mi.id)
            if mbox is not None:
                mbox.info = mi

    async def _rename_inbox(self, inbox: MailboxInfo, new: str) -> None:
        target = await self.create_mailbox(new)
        src = await self.open_mailbox(inbox.name)
        dst = await self.open_mailbox(target.name)
        try:
            uids = list(src.view.uids)
            if uids:
                await src.move(uids, dst)
        finally:
            await src.close()
            await dst.close()

    async def raise_counters(
        self, name: str, *, uidnext: int = 0, highestmodseq: int = 0
    ) -> MailboxInfo:
        """Raise a mailbox's UIDNEXT / HIGHESTMODSEQ to at least the given values (imports
        keep Dovecot's so clients that cached them see no change); never lowers them.
        The messages imported so far are old: none of them is ``\\Recent``."""
        info = await self.get_mailbox_info(name)

        def tx(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE mailboxes SET uidnext = max(uidnext, ?),"
                " highestmodseq = max(highestmodseq, ?) WHERE id = ?",
                (uidnext, highestmodseq, info.id),
            )
            conn.execute(
                "UPDATE mailboxes SET first_recent_uid = max(first_recent_uid, uidnext)"
                " WHERE id = ?",
                (info.id,),
            )

        await self.db.write(tx)
        mbox = self._mailboxes.get(info.id)
        if mbox is not None:
            await mbox.refresh()
        return await self.get_mailbox_info(name)

    async def reset_identity(self, name: str, *, guid: str, uidvalidity: int) -> MailboxInfo:
        """Give an *empty* mailbox another GUID and UIDVALIDITY (imports keep Dovecot's,
        e.g. for the default INBOX of a new user).

        The mailbox starts a new UID space: UIDNEXT goes back to 1 and the record of
        earlier expunges is dropped; HIGHESTMODSEQ is kept (it never goes down); name,
        special-use and subscription do not change.  The mailbox directory is named by
        GUID, so its ``dbox-box`` file is written under the new GUID and the old
        directory removed.  Visible to everyone when this returns.

        Meant for a mailbox nobody uses yet: a process that has it open elsewhere keeps
        the old UIDVALIDITY (and GUID directory) until it opens it again.

        Raises:
            MailboxNotFound: no such mailbox.
            StorageError: the mailbox holds messages or a save is in progress in it,
                another mailbox has that GUID, or this process has it open.
        """
        info = await self.get_mailbox_info(name)
        if info.id in self._mailboxes:
            raise StorageError(f"mailbox {info.name!r} is open; close it first")

        def tx(conn: sqlite3.Connection) -> None:
            if (
                conn.execute(
                    "SELECT 1 FROM messages WHERE mailbox_id = ? LIMIT 1", (info.id,)
                ).fetchone()
                or conn.execute(
                    "SELECT 1 FROM pending WHERE mailbox_id = ? LIMIT 1", (info.id,)
                ).fetchone()
            ):
                raise StorageError(f"mailbox {info.name!r} is not empty")
            other = conn.execute(
                "SELECT name FROM mailboxes WHERE guid = ? AND id != ?", (guid, info.id)
            ).fetchone()
            if other:
                raise StorageError(f"mailbox {other[0]!r} already has GUID {guid}")
            conn.execute(
                "UPDATE mailboxes SET guid = ?, uidvalidity = ?, uidnext = 1, first_recent_uid = 1,"
                " keywords = '' WHERE id = ?",
                (guid, uidvalidity, info.id),
            )
            conn.execute("DELETE FROM expunged WHERE mailbox_id = ?", (info.id,))

        await self.db.write(tx)
        await self.mailbox_list_changed()
        new = await self.get_mailbox_info(name)
        await self._write_box_file(new)
        if new.guid != info.guid:
            await self._remove_dir(self.mailbox_dir(info.guid))
        return new

    # ------------------------------------------------------ subscriptions

    async def subscribe(self, name: str) -> None:
        """Subscribe ``name`` (it need not exist, as IMAP allows)."""
        norm = names.normalize(name)
        await self.db.write(
            lambda c: c.execute("INSERT OR IGNORE INTO subscriptions VALUES (?)", (norm,))
        )

    async def unsubscribe(self, name: str) -> None:
        """Unsubscribe ``name`` (no error if it was not subscribed)."""
        norm = names.normalize(name)
        await self.db.write(
            lambda c: c.execute("DELETE FROM subscriptions WHERE name = ?", (norm,))
        )

    async def subscriptions(self) -> list[str]:
        """Subscribed names, sorted."""

        def q(conn: sqlite3.Connection) -> list[str]:
            return [r[0] for r in conn.execute("SELECT name FROM subscriptions ORDER BY name")]

        return await self.db.read(q)

    # ------------------------------------------------------------- status

    async def status(self, name: str) -> MailboxStatus:
        """Counters of a mailbox (from the index; no message file is touched)."""
        info = await self.get_mailbox_info(name)

        def q(conn: sqlite3.Connection) -> MailboxStatus:
            row = conn.execute(
                "SELECT count(*), coalesce(sum(flags & 1 = 0), 0), coalesce(sum(size), 0),"
                " coalesce(sum(flags & 8 != 0), 0) FROM messages WHERE mailbox_id = ?",
                (info.id,),
            ).fetchone()
            mb = conn.execute(
                "SELECT uidnext, highestmodseq, first_recent_uid FROM mailboxes WHERE id = ?",
                (info.id,),
            ).fetchone()
            (recent,) = conn.execute(
                "SELECT count(*) FROM messages WHERE mailbox_id = ? AND uid >= ?",
                (info.id, mb[2]),
            ).fetchone()
            return MailboxStatus(
                messages=row[0],
                uidnext=mb[0],
                uidvalidity=info.uidvalidity,
                unseen=row[1],
                highestmodseq=mb[1],
                size=row[2],
                deleted=row[3],
                recent=recent,
            )

        return await self.db.read(q)

    # ------------------------------------------------------------ opening

    async def open_mailbox(self, name: str, *, load_view: bool = True) -> Mailbox:
        """Open a mailbox: every caller in this process shares its view.

        ``load_view=False`` is for saving into the mailbox only (APPEND, the target of
        COPY, LMTP): the view is not read from the index (that costs a query over every
        message) unless someone in this process has the mailbox open already, so such a
        mailbox has no view to read from and does not refresh one after commits.
        Call :meth:`Mailbox.close` when done.
        """
        info = await (self.get_mailbox_info(name) if load_view else self._identity(name))
        async with self._mailbox_lock:
            mbox = self._mailboxes.get(info.id)
            if mbox is None and not load_view:
                mbox = Mailbox(self, info)  # private and unloaded: close() forgets nothing
            elif mbox is None:
                mbox = Mailbox(self, info)
                await mbox.load()
                self._mailboxes[info.id] = mbox
            mbox.refs += 1
        return mbox

    def shared_mailbox(self, mailbox_id: int) -> Mailbox | None:
        """The mailbox whose view this process's sessions share, if one is open."""
        return self._mailboxes.get(mailbox_id)

    def forget_mailbox(self, mbox: Mailbox) -> None:
        """Drop the shared view once its last user closed it."""
        if self._mailboxes.get(mbox.info.id) is mbox:
            del self._mailboxes[mbox.info.id]

    async def close(self) -> None:
        """Close the index."""
        await self.db.close()


IDENTITY_CACHE_SIZE = 64
"""Mailbox names a user remembers for saving (the cache is emptied when full)."""
IDENTITY_TTL = 30.0
"""Seconds a remembered name is trusted at most (a bound should a marker write have
failed; normally the list generation says when it changed)."""


def _next_uidvalidity(conn: sqlite3.Connection) -> int:
    """Time-based and strictly increasing within a user, as Dovecot does."""
    row = conn.execute("SELECT max(uidvalidity) FROM mailboxes").fetchone()
    last = row[0] or 0
    return max(int(time.time()), last + 1) & 0xFFFFFFFF
