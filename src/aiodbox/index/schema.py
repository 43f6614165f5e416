"""The index schema and its migrations.

Theory of operation: ``meta.schema_version`` says which migrations ran.  ``MIGRATIONS[i]``
turns version ``i`` into ``i + 1``; opening a database runs the missing ones in one
transaction, so an index written by an older aiodbox is upgraded in place and a newer one
is refused (never silently misread).

Flags are a bit mask (``FLAG_BITS``); keywords are a space-separated list in the order
they were first set.  Every change to a mailbox's messages takes the next modseq of that
mailbox (``mailboxes.highestmodseq``), so "what changed since modseq N" is one indexed
query, and expunges leave a row in ``expunged`` with their modseq for the same reason.
"""

from __future__ import annotations

import sqlite3

SCHEMA_VERSION = 2

FLAG_BITS: dict[str, int] = {
    "\\Seen": 1,
    "\\Answered": 2,
    "\\Flagged": 4,
    "\\Deleted": 8,
    "\\Draft": 16,
}
"""System flags as bits (``\\Recent`` is session state and never stored)."""

_V1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE mailboxes (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    guid TEXT NOT NULL UNIQUE,
    uidvalidity INTEGER NOT NULL,
    uidnext INTEGER NOT NULL DEFAULT 1,
    highestmodseq INTEGER NOT NULL DEFAULT 1,
    special_use TEXT,
    keywords TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL
);
CREATE TABLE subscriptions (name TEXT PRIMARY KEY);
CREATE TABLE messages (
    mailbox_id INTEGER NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
    uid INTEGER NOT NULL,
    guid TEXT NOT NULL,
    flags INTEGER NOT NULL DEFAULT 0,
    keywords TEXT NOT NULL DEFAULT '',
    modseq INTEGER NOT NULL,
    internal_date INTEGER NOT NULL,
    internal_tz INTEGER NOT NULL DEFAULT 0,
    save_date INTEGER NOT NULL,
    size INTEGER NOT NULL,
    file_name TEXT,
    map_uid INTEGER,
    cache BLOB,
    PRIMARY KEY (mailbox_id, uid)
) WITHOUT ROWID;
CREATE INDEX messages_modseq ON messages (mailbox_id, modseq);
CREATE INDEX messages_map_uid ON messages (map_uid) WHERE map_uid IS NOT NULL;
CREATE TABLE expunged (
    mailbox_id INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    modseq INTEGER NOT NULL,
    file_name TEXT,
    PRIMARY KEY (mailbox_id, uid)
) WITHOUT ROWID;
CREATE INDEX expunged_modseq ON expunged (mailbox_id, modseq);
CREATE TABLE map (
    map_uid INTEGER PRIMARY KEY,
    file_id INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    size INTEGER NOT NULL,
    refcount INTEGER NOT NULL
);
CREATE INDEX map_file ON map (file_id);
CREATE TABLE files (
    file_id INTEGER PRIMARY KEY,
    size INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL
);
CREATE TABLE pending (
    id INTEGER PRIMARY KEY,
    mailbox_id INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    count INTEGER NOT NULL,
    file_id INTEGER,
    offset INTEGER,
    size INTEGER,
    pid INTEGER NOT NULL,
    started REAL NOT NULL
);
"""

_V2 = """
ALTER TABLE mailboxes ADD COLUMN first_recent_uid INTEGER NOT NULL DEFAULT 1;
UPDATE mailboxes SET first_recent_uid = uidnext
"""
"""``\\Recent`` (RFC 3501): messages from ``first_recent_uid`` on are recent and not
yet claimed by a session (as Dovecot's index header field of that name).  An index
written before this knew no recent messages: nothing is recent after the upgrade."""

MIGRATIONS: list[str] = [_V1, _V2]
"""``MIGRATIONS[i]`` upgrades schema version ``i`` to ``i + 1``."""


class SchemaTooNew(Exception):
    """The index was written by a newer aiodbox (its schema version is unknown here)."""


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema of ``conn`` up to date (blocking; call off the event loop).

    Returns:
        The schema version before migrating (0 for a new database).

    Raises:
        SchemaTooNew: the database has a newer schema version than this code knows.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        has_meta = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
        ).fetchone()
        version = 0
        if has_meta:
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"index schema version {version} is newer than this aiodbox ({SCHEMA_VERSION})"
            )
        for step in range(version, SCHEMA_VERSION):
            for statement in MIGRATIONS[step].split(";"):
                if statement.strip():
                    conn.execute(statement)
        conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
            (str(SCHEMA_VERSION),),
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return version
