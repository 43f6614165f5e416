"""purge: reclaim the space of expunged mdbox records (never rewriting a file in place).

Theory of operation
-------------------
An expunge in mdbox only drops the message's refcount in the map; the bytes stay in
``storage/m.<id>``.  ``purge`` takes each file that holds dead records (refcount 0) or
no live record at all, locks it (a file being appended to is skipped, not waited for),
copies its live records into a new file, commits that file, then in **one** index
transaction points the live ``map_uid``s at their new places and forgets the dead ones,
and only then deletes the old file.

A crash before the index transaction leaves a new file nobody references (garbage the
next purge deletes); a crash after it leaves an old file nobody references (the same).
A reader that looked up a location just before the transaction still reads the old file
through its open handle, or, if it opens it after the delete, gets ``FsNotFound`` and
looks the location up again (see ``Mailbox.open_message``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiodbox.dbox.codec import Metadata
from aiodbox.dbox.file import (
    create_mdbox_file,
    open_mdbox_file,
    open_mdbox_message,
    read_file_header,
)
from aiodbox.fs import FsNotFound

if TYPE_CHECKING:
    import sqlite3

    from aiodbox.storage.formats import MdboxFormat
    from aiodbox.storage.storage import User

UNREFERENCED_GRACE_SECONDS = 300.0
"""A file without any map row is only deleted once it is this old (a save may be starting)."""


@dataclass
class PurgeReport:
    """What purge did."""

    files_rewritten: int = 0
    files_deleted: int = 0
    files_skipped_locked: int = 0
    records_moved: int = 0
    records_dropped: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    actions: list[str] = field(default_factory=list)


async def purge(user: User) -> PurgeReport:
    """Purge ``user``'s mdbox storage (a no-op for sdbox, which deletes at expunge)."""
    from aiodbox.storage.formats import MdboxFormat

    report = PurgeReport()
    fmt = user.format
    if not isinstance(fmt, MdboxFormat):
        return report

    def candidates(conn: sqlite3.Connection) -> list[tuple[int, int, int, float]]:
        return [
            (r[0], r[1] or 0, r[2] or 0, r[3])
            for r in conn.execute(
                "SELECT f.file_id, count(m.map_uid), sum(m.refcount > 0), f.created"
                " FROM files f LEFT JOIN map m ON m.file_id = f.file_id GROUP BY f.file_id"
            )
        ]

    now = time.time()
    for file_id, total, live, created in await user.db.read(candidates):
        dead = total - live
        if total == 0 and now - created < UNREFERENCED_GRACE_SECONDS:
            continue
        if dead == 0 and total > 0:
            continue
        await _purge_file(user, fmt, file_id, report)
    return report


async def rewrite_file(user: User, file_id: int) -> PurgeReport:
    """Copy the live records of ``m.<file_id>`` to a new file and delete the old one.

    fsck uses it after saving a file's damaged bytes to lost+found.
    """
    from aiodbox.storage.formats import MdboxFormat

    report = PurgeReport()
    fmt = user.format
    if isinstance(fmt, MdboxFormat):
        await _purge_file(user, fmt, file_id, report)
    return report


async def _purge_file(user: User, fmt: MdboxFormat, file_id: int, report: PurgeReport) -> None:
    fs = user.fs
    path = fmt.file_path(file_id)
    try:
        old = await open_mdbox_file(fs, path)
    except FsNotFound:
        await user.db.write(lambda c: _forget_file(c, file_id))
        report.actions.append(f"forgot m.{file_id}: the file is gone")
        return
    try:
        if not old.try_lock():
            report.files_skipped_locked += 1
            report.actions.append(f"skipped m.{file_id}: in use")
            return
        if not await fs.exists(path):  # purged by someone else meanwhile
            return
        report.bytes_before += (await fs.stat(path)).size

        def live_rows(conn: sqlite3.Connection) -> list[tuple[int, int, int]]:
            return conn.execute(
                "SELECT map_uid, offset, size FROM map WHERE file_id = ? AND refcount > 0"
                " ORDER BY offset",
                (file_id,),
            ).fetchall()

        rows = await user.db.read(live_rows)
        moved: list[tuple[int, int, int]] = []  # (map_uid, new file, new offset)
        new_id: int | None = None
        if rows:
            new_id, moved = await _copy_live(user, fmt, old.handle, rows)
            report.files_rewritten += 1
            report.records_moved += len(moved)

        def tx(conn: sqlite3.Connection) -> int:
            for map_uid, new_file, offset in moved:
                conn.execute(
                    "UPDATE map SET file_id = ?, offset = ? WHERE map_uid = ?",
                    (new_file, offset, map_uid),
                )
            dropped = conn.execute(
                "DELETE FROM map WHERE file_id = ? RETURNING map_uid", (file_id,)
            ).fetchall()
            _forget_file(conn, file_id)
            return len(dropped)

        report.records_dropped += await user.db.write(tx)
        await fs.delete(path)
        fmt.forget_reader(file_id)
        report.files_deleted += 1
        if new_id is not None:
            report.bytes_after += (await fs.stat(fmt.file_path(new_id))).size
            report.actions.append(f"rewrote m.{file_id} as m.{new_id} ({len(moved)} records)")
        else:
            report.actions.append(f"deleted m.{file_id}: no live records")
    finally:
        await old.aclose()


async def _copy_live(
    user: User, fmt: MdboxFormat, source: Any, rows: list[tuple[int, int, int]]
) -> tuple[int, list[tuple[int, int, int]]]:
    now = time.time()

    def alloc(conn: sqlite3.Connection) -> int:
        cur = conn.execute("INSERT INTO files (size, created) VALUES (0, ?)", (now,))
        assert cur.lastrowid is not None
        return cur.lastrowid

    new_id = await user.db.write(alloc)
    new = await create_mdbox_file(user.fs, user.path("storage", f"m.{new_id}.purge"))
    moved: list[tuple[int, int, int]] = []
    try:
        if not new.try_lock():
            raise RuntimeError("could not lock a new mdbox file")
        header = await read_file_header(source)
        for map_uid, offset, size in rows:
            msg = await open_mdbox_message(source, offset, body_size=size, header=header)
            meta = msg.metadata
            assert isinstance(meta, Metadata)
            appender = new.append(
                guid=meta.guid,
                received=meta.received,
                orig_mailbox=meta.orig_mailbox,
                pop3_uidl=meta.pop3_uidl,
                pop3_order=meta.pop3_order,
                extra=meta.extra,
            )
            async for chunk in msg.open_body():
                await appender.write(chunk)
            placed = await appender.finish()
            moved.append((map_uid, new_id, placed.offset))
        await new.commit(f"m.{new_id}")
        size = new.size
        await user.db.write(
            lambda c: c.execute("UPDATE files SET size = ? WHERE file_id = ?", (size, new_id))
        )
    finally:
        await new.aclose()
    return new_id, moved


def _forget_file(conn: sqlite3.Connection, file_id: int) -> None:
    conn.execute("DELETE FROM files WHERE file_id = ?", (file_id,))
