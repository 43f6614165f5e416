"""fsck: check a user's index against the message files, and repair.

Theory of operation
-------------------
The files are the truth for *which messages exist* (GUID, received date, size); the
index is the truth for flags, keywords and UIDs (DESIGN.md §6).  ``check`` compares the
two and lists every problem; ``repair`` makes the index agree with the files:

* mailboxes: every ``mailboxes/<guid>/dbox-box`` file is a mailbox (name, GUID,
  UIDVALIDITY); a lost index gets them back (a fresh, empty default mailbox with the same
  name takes the file's GUID and UIDVALIDITY).
* **orphans** — data no row points at — are adopted.  A crash between committing data and
  the index transaction leaves exactly those; ``pending`` rows name them (sdbox: the UID
  range, mdbox: file, offset and size).  sdbox files keep their UID (``u.<uid>``); mdbox
  records go back to the mailbox in their ``B`` metadata.  Data that an expunge left
  behind (the ``expunged`` table) or a purge copied twice (a GUID that is still
  referenced) is garbage, not an orphan.
* rows whose data is **missing** are dropped (the message is gone; reported).
* **damaged** bytes (a record whose framing or ``H`` digest fails) are never dropped:
  they are saved, as they are, into a ``lost+found`` mailbox, and the damaged file or
  record leaves the index.

Rows that survive keep their flags, keywords and UIDs.  Every adoption gets a new modseq.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiodbox.dbox.codec import Record
from aiodbox.dbox.file import (
    DboxCorruptedError,
    MdboxFile,
    open_mdbox_file,
    open_sdbox_message,
    scan,
    verify_body,
)
from aiodbox.dbox.fix import V3Scan
from aiodbox.fs import FsNotFound
from aiodbox.fs.paths import pid_alive
from aiodbox.storage.errors import MailboxExists
from aiodbox.storage.purge import rewrite_file

if TYPE_CHECKING:
    import sqlite3

    from aiodbox.storage.storage import MailboxInfo, User

LOST_FOUND = "lost+found"
STALE_PENDING_SECONDS = 3600.0


@dataclass(frozen=True, slots=True)
class Problem:
    """One inconsistency.

    Attributes:
        kind: ``missing`` (a row without data), ``orphaned`` (data without a row),
            ``pending`` (an orphan a crashed save left, adoptable), ``garbage`` (data an
            expunge or purge left; purge removes it), ``corrupted`` (damaged bytes),
            ``mismatch`` (GUID or size differ between row and file), ``mailbox`` (the
            mailbox list and the ``dbox-box`` files disagree).
        mailbox: the mailbox name, if known.
        uid: the UID, if any.
        path: the file concerned.
        detail: a human explanation.
    """

    kind: str
    mailbox: str | None
    uid: int | None
    path: str
    detail: str

    def __str__(self) -> str:
        where = f"{self.mailbox or '?'}" + (f" uid {self.uid}" if self.uid is not None else "")
        return f"{self.kind}: {where}: {self.path}: {self.detail}"


@dataclass
class FsckReport:
    """What fsck found (and, after ``repair``, what it did)."""

    problems: list[Problem] = field(default_factory=list)
    messages: int = 0
    files: int = 0
    actions: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing but garbage for purge was found."""
        return all(p.kind == "garbage" for p in self.problems)


@dataclass(frozen=True, slots=True)
class _Row:
    uid: int
    guid: str
    size: int
    file_name: str | None
    map_uid: int | None


async def _read_json(user: User, path: str) -> dict[str, Any] | None:
    try:
        data = await user.fs.read_file(path)
        value = json.loads(data)
    except (FsNotFound, ValueError):
        return None
    return value if isinstance(value, dict) else None


async def _box_files(user: User) -> AsyncIterator[tuple[str, dict[str, Any] | None]]:
    async for directory in user.fs.iterate(user.path("mailboxes"), dirs=True):
        guid = directory.rsplit("/", 1)[-1]
        yield guid, await _read_json(user, f"{directory}/dbox-box")


def _rows(conn: sqlite3.Connection, mailbox_id: int) -> list[_Row]:
    return [
        _Row(*r)
        for r in conn.execute(
            "SELECT uid, guid, size, file_name, map_uid FROM messages WHERE mailbox_id = ?",
            (mailbox_id,),
        )
    ]


class Fsck:
    """One fsck run over one user; ``check`` only reads, ``repair`` changes things."""

    def __init__(self, user: User, *, repair: bool) -> None:
        self.user = user
        self.repair = repair
        self.report = FsckReport()
        self._lost: list[tuple[bytes, str]] = []

    def _problem(
        self, kind: str, mailbox: str | None, uid: int | None, path: str, detail: str
    ) -> None:
        self.report.problems.append(Problem(kind, mailbox, uid, path, detail))

    def _did(self, what: str) -> None:
        self.report.actions.append(what)

    async def run(self) -> FsckReport:
        """Check (and repair) everything; the report lists what was found and done."""
        await self._mailboxes()
        fmt = self.user.format.name
        if fmt == "sdbox":
            await self._sdbox()
        else:
            await self._mdbox()
        if self.repair:
            await self._save_lost()
            await self.user.db.write(_clear_stale_pending)
            for mbox in list(self.user._mailboxes.values()):
                await mbox.refresh()
        return self.report

    # ------------------------------------------------------------ mailboxes

    async def _mailboxes(self) -> None:
        user = self.user
        infos = {m.guid: m for m in await user.list_mailboxes()}
        async for guid, meta in _box_files(user):
            if guid in infos:
                continue
            path = f"{user.mailbox_dir(guid)}/dbox-box"
            if meta is None or not isinstance(meta.get("name"), str):
                self._problem(
                    "mailbox", None, None, path, "a mailbox directory without a readable dbox-box"
                )
                continue
            self._problem("mailbox", meta["name"], None, path, "a mailbox missing from the index")
            if self.repair:
                await self._restore_mailbox(guid, meta)

    async def _restore_mailbox(self, guid: str, meta: dict[str, Any]) -> None:
        user = self.user
        name = str(meta["name"])
        validity = int(meta.get("uidvalidity") or 0) or None
        try:
            await user.create_mailbox(name, guid=guid, uidvalidity=validity)
            self._did(f"restored mailbox {name!r} from its dbox-box file")
            return
        except MailboxExists:
            pass
        existing = await user.get_mailbox_info(name)
        status = await user.status(name)
        if status.messages == 0:

            def adopt(conn: sqlite3.Connection) -> None:
                conn.execute(
                    "UPDATE mailboxes SET guid = ?, uidvalidity = coalesce(?, uidvalidity)"
                    " WHERE id = ?",
                    (guid, validity, existing.id),
                )

            await user.db.write(adopt)
            await user.mailbox_list_changed()
            await user._remove_dir(user.mailbox_dir(existing.guid))  # the empty newcomer
            self._did(f"mailbox {name!r} took the GUID and UIDVALIDITY of its files")
        else:
            restored = f"{name}-restored-{guid[:8]}"
            await user.create_mailbox(restored, guid=guid, uidvalidity=validity)
            self._did(f"restored mailbox {name!r} as {restored!r} (the name was taken)")

    # ---------------------------------------------------------------- sdbox

    async def _sdbox(self) -> None:
        for info in await self.user.list_mailboxes():
            await self._sdbox_mailbox(info)

    async def _sdbox_mailbox(self, info: MailboxInfo) -> None:
        user = self.user
        directory = user.mailbox_dir(info.guid)
        mailbox_id = info.id

        def read_rows(conn: sqlite3.Connection) -> list[_Row]:
            return _rows(conn, mailbox_id)

        def read_marks(conn: sqlite3.Connection) -> tuple[set[int], list[tuple[int, int, bool]]]:
            return _expunged_and_pending(conn, mailbox_id)

        rows = {r.file_name: r for r in await user.db.read(read_rows)}
        expunged, pending = await user.db.read(read_marks)
        names = [p.rsplit("/", 1)[-1] async for p in user.fs.iterate(directory)]
        files = {n for n in names if n.startswith("u.") and n[2:].isdigit()}
        self.report.files += len(files)
        self.report.messages += len(rows)
        adopt: list[tuple[int, str]] = []
        for name, row in sorted(rows.items(), key=lambda kv: kv[1].uid):
            path = f"{directory}/{name}"
            if name not in files:
                self._problem("missing", info.name, row.uid, path, "the index row has no file")
                if self.repair:
                    await _drop_rows(user, info, [row.uid])
                    self._did(f"dropped {info.name} uid {row.uid}: its file is missing")
                continue
            await self._check_sdbox_file(info, row, path)
        for name in sorted(files - set(rows), key=lambda n: int(n[2:])):
            uid = int(name[2:])
            path = f"{directory}/{name}"
            if uid in expunged:
                self._problem("garbage", info.name, uid, path, "left behind by an expunge")
                if self.repair:
                    await _delete(user, path)
                    self._did(f"deleted {path}: expunged")
                continue
            owner = next((alive for a, b, alive in pending if a <= uid < b), None)
            if owner:
                self._problem("pending", info.name, uid, path, "a save in progress")
                continue
            kind = "orphaned" if owner is None else "pending"
            self._problem(kind, info.name, uid, path, "a message file without an index row")
            adopt.append((uid, path))
        if self.repair and adopt:
            await self._adopt_sdbox(info, adopt)

    async def _check_sdbox_file(self, info: MailboxInfo, row: _Row, path: str) -> None:
        try:
            msg = await open_sdbox_message(self.user.fs, path)
        except DboxCorruptedError as e:
            await self._corrupt_sdbox(info, row.uid, path, e.reason)
            return
        try:
            if msg.guid != row.guid or msg.imap_size != row.size:
                self._problem(
                    "mismatch",
                    info.name,
                    row.uid,
                    path,
                    f"index: guid {row.guid} size {row.size}; file: {msg.guid} {msg.imap_size}",
                )
                if self.repair:
                    await self.user.db.write(
                        lambda c: c.execute(
                            "UPDATE messages SET guid = ?, size = ?, cache = NULL"
                            " WHERE mailbox_id = ? AND uid = ?",
                            (msg.guid, msg.imap_size, info.id, row.uid),
                        )
                    )
                    self._did(f"{info.name} uid {row.uid}: GUID and size taken from the file")
            bad = await verify_body(msg)
        finally:
            await msg.aclose()
        if bad is not None:
            await self._corrupt_sdbox(info, row.uid, path, bad.reason)

    async def _corrupt_sdbox(self, info: MailboxInfo, uid: int, path: str, reason: str) -> None:
        self._problem("corrupted", info.name, uid, path, reason)
        if not self.repair:
            return
        self._lost.append((await self.user.fs.read_file(path), f"{path}: {reason}"))
        await _drop_rows(self.user, info, [uid])
        await _delete(self.user, path)
        self._did(f"moved damaged {path} to {LOST_FOUND}")

    async def _adopt_sdbox(self, info: MailboxInfo, files: list[tuple[int, str]]) -> None:
        rows: list[tuple[Any, ...]] = []
        for uid, path in files:
            try:
                msg = await open_sdbox_message(self.user.fs, path)
            except DboxCorruptedError as e:
                await self._corrupt_sdbox(info, uid, path, e.reason)
                continue
            try:
                bad = await verify_body(msg)
            finally:
                await msg.aclose()
            if bad is not None:
                await self._corrupt_sdbox(info, uid, path, bad.reason)
                continue
            received = msg.received or int(time.time())
            rows.append(
                (uid, msg.guid or os.urandom(16).hex(), received, msg.imap_size, f"u.{uid}", None)
            )
        if rows:
            await _insert_adopted(self.user, info, rows)
            self._did(f"adopted {len(rows)} message file(s) into {info.name}")

    # ---------------------------------------------------------------- mdbox

    async def _mdbox(self) -> None:
        user = self.user
        infos = {m.guid: m for m in await user.list_mailboxes()}
        by_id = {m.id: m for m in infos.values()}

        Rows = list[tuple[Any, ...]]

        def load(conn: sqlite3.Connection) -> tuple[Rows, Rows, Rows, Rows]:
            maps = conn.execute(
                "SELECT map_uid, file_id, offset, size, refcount FROM map"
            ).fetchall()
            msgs = conn.execute(
                "SELECT mailbox_id, uid, guid, size, map_uid FROM messages"
            ).fetchall()
            pend = conn.execute(
                "SELECT mailbox_id, uid, file_id, offset, size, pid, started FROM pending"
                " WHERE file_id IS NOT NULL"
            ).fetchall()
            files = conn.execute("SELECT file_id FROM files").fetchall()
            return maps, msgs, pend, files

        maps, msgs, pend, file_rows = await user.db.read(load)
        self.report.messages = len(msgs)
        map_by_loc: dict[tuple[int, int], tuple[Any, ...]] = {(r[1], r[2]): r for r in maps}
        map_by_uid: dict[int, tuple[Any, ...]] = {r[0]: r for r in maps}
        referenced_guids: set[str] = {m[2] for m in msgs}
        pending_at: dict[tuple[int, int], tuple[Any, ...]] = {(r[2], r[3]): r for r in pend}
        known_files: set[int] = {r[0] for r in file_rows}
        storage = user.path("storage")
        on_disk: dict[int, str] = {}
        async for entry in user.fs.iterate(storage):
            fname = entry.rsplit("/", 1)[-1]
            if fname.startswith("m.") and fname[2:].isdigit():
                on_disk[int(fname[2:])] = entry
        self.report.files = len(on_disk)
        damaged_files: set[int] = set()
        intact: dict[tuple[int, int], Record] = {}
        for file_id, fpath in sorted(on_disk.items()):
            result = await scan(user.fs, fpath)
            if not isinstance(result, V3Scan):
                detail = getattr(result, "reason", "not a v3 mdbox file")
                self._problem("corrupted", None, None, fpath, detail)
                continue
            for found in result.records:
                intact[(file_id, found.offset)] = found
            for dmg in result.damaged:
                what = f"bytes {dmg.start}-{dmg.end}: {dmg.reason}"
                self._problem("corrupted", None, None, fpath, what)
                if self.repair:
                    data = await _read_range(user, fpath, dmg.start, dmg.end)
                    self._lost.append((data, f"{fpath} {what}"))
                    damaged_files.add(file_id)
        # records no map row points at, by GUID (a lost map row can be re-linked)
        loose: dict[str, tuple[int, Record]] = {}
        for (file_id, offset), found in intact.items():
            if (file_id, offset) not in map_by_loc:
                loose.setdefault(found.metadata.guid, (file_id, found))
        # rows → records
        dead_map: list[int] = []
        relinked: set[tuple[int, int]] = set()
        for mailbox_id, uid, guid, size, map_uid in msgs:
            info = by_id.get(mailbox_id)
            name = info.name if info else None
            m = map_by_uid.get(map_uid)
            if m is None:
                spare = loose.get(guid)
                detail = f"map_uid {map_uid} has no map entry"
                if spare is not None:
                    detail += f"; the record is intact in m.{spare[0]} at {spare[1].offset}"
                self._problem("missing", name, uid, storage, detail)
                if spare is not None:
                    relinked.add((spare[0], spare[1].offset))
                if self.repair and info:
                    if spare is not None:
                        await _relink(user, info, uid, spare[0], spare[1])
                        self._did(f"re-linked {name} uid {uid} to m.{spare[0]}")
                    else:
                        await _drop_rows(user, info, [uid])
                continue
            located = intact.get((m[1], m[2]))
            mpath = f"{storage}/m.{m[1]}"
            if located is None:
                kind = "missing" if m[1] not in on_disk else "corrupted"
                self._problem(kind, name, uid, mpath, f"no intact record at offset {m[2]}")
                if self.repair and info:
                    await _drop_rows(user, info, [uid])
                    dead_map.append(m[0])
                continue
            if located.metadata.guid != guid or located.body_size != size:
                self._problem(
                    "mismatch", name, uid, mpath, "the record's GUID or size differ from the index"
                )
        # records → rows
        adopt: dict[str, list[tuple[int, Record, int | None]]] = {}
        for (file_id, offset), rec in sorted(intact.items()):
            if (file_id, offset) in relinked:
                continue
            if (file_id, offset) in map_by_loc:
                row = map_by_loc[(file_id, offset)]
                if row[4] <= 0:
                    self._problem(
                        "garbage",
                        None,
                        None,
                        f"{storage}/m.{file_id}",
                        f"expunged record at {offset}",
                    )
                continue
            rpath = f"{storage}/m.{file_id}"
            prow = pending_at.get((file_id, offset))
            if prow is not None and _live(prow[5], prow[6]):
                self._problem("pending", None, None, rpath, f"a save in progress at {offset}")
                continue
            if prow is None and rec.metadata.guid in referenced_guids:
                self._problem("garbage", None, None, rpath, f"unreferenced copy at {offset}")
                continue
            kind = "pending" if prow is not None else "orphaned"
            target: str = rec.metadata.orig_mailbox or ""
            if prow is not None and prow[0] in by_id:
                target = by_id[prow[0]].guid
            owner = infos[target].name if target in infos else None
            self._problem(kind, owner, None, rpath, f"a record at {offset} without an index row")
            adopt.setdefault(target, []).append((file_id, rec, prow[1] if prow else None))
        for file_id, fpath in sorted(on_disk.items()):
            if file_id not in known_files:
                self._problem("orphaned", None, None, fpath, "a storage file unknown to the index")
                if self.repair:
                    await _register_file(user, file_id, (await user.fs.stat(fpath)).size)
        if self.repair:
            if dead_map:
                await user.db.write(
                    lambda c: c.executemany(
                        "DELETE FROM map WHERE map_uid = ?", [(u,) for u in dead_map]
                    )
                )
            for target, records in adopt.items():
                info = infos.get(target)
                if info is None:
                    info = await self._lost_found_info()
                await self._adopt_mdbox(info, records)
            for file_id in sorted(damaged_files):
                # the damaged bytes are kept in lost+found: rewrite the file without them
                rewritten = await rewrite_file(user, file_id)
                self.report.actions += rewritten.actions

    async def _adopt_mdbox(
        self, info: MailboxInfo, records: list[tuple[int, Record, int | None]]
    ) -> None:
        """Adopt records no map row pointed at when the index was read.

        A save holds its file locked from its first byte until its index transaction
        ended, and writes no ``pending`` row where it takes its UIDs at the end (staged
        saves): so each file is locked here first (a file in use is left alone: a save
        may be under way in it), and a record that has a map row by the time of this
        transaction is left alone too (its save finished since the index was read)."""
        now = int(time.time())
        held: dict[int, MdboxFile] = {}
        try:
            for file_id in sorted({r[0] for r in records}):
                path = self.user.path("storage", f"m.{file_id}")
                try:
                    f = await open_mdbox_file(self.user.fs, path)
                except FsNotFound:
                    continue
                if f.try_lock():
                    held[file_id] = f
                else:
                    await f.aclose()
                    self._problem("pending", info.name, None, path, "a save in progress")
            n = await self._adopt_locked(info, [r for r in records if r[0] in held], now)
        finally:
            for f in held.values():
                await f.aclose()
        if n:
            self._did(f"adopted {n} record(s) into {info.name}")

    async def _adopt_locked(
        self, info: MailboxInfo, records: list[tuple[int, Record, int | None]], now: int
    ) -> int:
        if not records:
            return 0

        def tx(conn: sqlite3.Connection) -> int:
            modseq = _bump(conn, info.id)
            uidnext = int(
                conn.execute("SELECT uidnext FROM mailboxes WHERE id = ?", (info.id,)).fetchone()[0]
            )
            taken = {
                r[0]
                for r in conn.execute("SELECT uid FROM messages WHERE mailbox_id = ?", (info.id,))
            }
            adopted = 0
            for file_id, rec, reserved in records:
                if conn.execute(
                    "SELECT 1 FROM map WHERE file_id = ? AND offset = ?", (file_id, rec.offset)
                ).fetchone():
                    continue  # indexed meanwhile
                adopted += 1
                # a crashed save's record keeps the UID it had reserved, if still free
                if reserved is not None and reserved not in taken and reserved < uidnext:
                    uid = reserved
                else:
                    uid = uidnext
                    uidnext += 1
                taken.add(uid)
                cur = conn.execute(
                    "INSERT INTO map (file_id, offset, size, refcount) VALUES (?, ?, ?, 1)",
                    (file_id, rec.offset, rec.body_size),
                )
                conn.execute(
                    "INSERT INTO messages (mailbox_id, uid, guid, flags, keywords, modseq,"
                    " internal_date, save_date, size, map_uid)"
                    " VALUES (?, ?, ?, 0, '', ?, ?, ?, ?, ?)",
                    (
                        info.id,
                        uid,
                        rec.metadata.guid,
                        modseq,
                        rec.metadata.received or now,
                        now,
                        rec.body_size,
                        cur.lastrowid,
                    ),
                )
            conn.execute("UPDATE mailboxes SET uidnext = ? WHERE id = ?", (uidnext, info.id))
            return adopted

        return await self.user.db.write(tx)

    # ------------------------------------------------------------ lost+found

    async def _lost_found_info(self) -> MailboxInfo:
        try:
            return await self.user.get_mailbox_info(LOST_FOUND)
        except Exception:
            return await self.user.create_mailbox(LOST_FOUND)

    async def _save_lost(self) -> None:
        if not self._lost:
            return
        await self._lost_found_info()
        mbox = await self.user.open_mailbox(LOST_FOUND)
        try:
            for data, origin in self._lost:
                header = f"X-Aiodbox-Lost-Found: {origin}\r\n".encode("utf-8", "replace")
                await mbox.save(header + data)
                self._did(f"saved {len(data)} damaged bytes to {LOST_FOUND}: {origin}")
        finally:
            await mbox.close()


def _live(pid: int, started: float) -> bool:
    """Whether a pending row belongs to a save that may still be running."""
    return pid_alive(pid) and time.time() - started < STALE_PENDING_SECONDS


def _expunged_and_pending(
    conn: sqlite3.Connection, mailbox_id: int
) -> tuple[set[int], list[tuple[int, int, bool]]]:
    expunged = {
        r[0] for r in conn.execute("SELECT uid FROM expunged WHERE mailbox_id = ?", (mailbox_id,))
    }
    pending = [
        (r[0], r[0] + r[1], _live(r[2], r[3]))
        for r in conn.execute(
            "SELECT uid, count, pid, started FROM pending WHERE mailbox_id = ? AND file_id IS NULL",
            (mailbox_id,),
        )
    ]
    return expunged, pending


def _bump(conn: sqlite3.Connection, mailbox_id: int) -> int:
    return int(
        conn.execute(
            "UPDATE mailboxes SET highestmodseq = highestmodseq + 1 WHERE id = ?"
            " RETURNING highestmodseq",
            (mailbox_id,),
        ).fetchone()[0]
    )


async def _insert_adopted(user: User, info: MailboxInfo, rows: list[tuple[Any, ...]]) -> None:
    now = int(time.time())

    def tx(conn: sqlite3.Connection) -> None:
        modseq = _bump(conn, info.id)
        top = 0
        for uid, guid, received, size, file_name, map_uid in rows:
            conn.execute(
                "INSERT OR IGNORE INTO messages (mailbox_id, uid, guid, flags, keywords, modseq,"
                " internal_date, save_date, size, file_name, map_uid)"
                " VALUES (?, ?, ?, 0, '', ?, ?, ?, ?, ?, ?)",
                (info.id, uid, guid, modseq, received, now, size, file_name, map_uid),
            )
            top = max(top, uid)
        conn.execute(
            "UPDATE mailboxes SET uidnext = max(uidnext, ?) WHERE id = ?", (top + 1, info.id)
        )

    await user.db.write(tx)


async def _relink(user: User, info: MailboxInfo, uid: int, file_id: int, rec: Record) -> None:
    def tx(conn: sqlite3.Connection) -> None:
        cur = conn.execute(
            "INSERT INTO map (file_id, offset, size, refcount) VALUES (?, ?, ?, 1)",
            (file_id, rec.offset, rec.body_size),
        )
        conn.execute(
            "UPDATE messages SET map_uid = ? WHERE mailbox_id = ? AND uid = ?",
            (cur.lastrowid, info.id, uid),
        )

    await user.db.write(tx)


async def _register_file(user: User, file_id: int, size: int) -> None:
    def tx(conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT OR IGNORE INTO files (file_id, size, created) VALUES (?, ?, ?)",
            (file_id, size, time.time()),
        )

    await user.db.write(tx)


async def _drop_rows(user: User, info: MailboxInfo, uids: list[int]) -> None:
    def tx(conn: sqlite3.Connection) -> None:
        modseq = _bump(conn, info.id)
        for uid in uids:
            conn.execute("DELETE FROM messages WHERE mailbox_id = ? AND uid = ?", (info.id, uid))
            conn.execute(
                "INSERT OR REPLACE INTO expunged (mailbox_id, uid, modseq) VALUES (?, ?, ?)",
                (info.id, uid, modseq),
            )

    await user.db.write(tx)


async def _delete(user: User, path: str) -> None:
    try:
        await user.fs.delete(path)
    except FsNotFound:
        pass


async def _read_range(user: User, path: str, start: int, end: int) -> bytes:
    h = user.fs.open(path)
    try:
        return await h.read_exactly(end - start, start)
    finally:
        await h.aclose()


def _clear_stale_pending(conn: sqlite3.Connection) -> None:
    for row_id, pid, started in conn.execute("SELECT id, pid, started FROM pending").fetchall():
        if not _live(pid, started):
            conn.execute("DELETE FROM pending WHERE id = ?", (row_id,))


async def check(user: User) -> FsckReport:
    """List every inconsistency between the index and the files (changes nothing)."""
    return await Fsck(user, repair=False).run()


async def repair(user: User) -> FsckReport:
    """Make the index agree with the files; see the module docstring."""
    return await Fsck(user, repair=True).run()
