"""The per-user SQLite index: mailboxes, messages, the mdbox map (DESIGN.md §6)."""

from __future__ import annotations

from aiodbox.index.db import IndexDB, sqlite_pool
from aiodbox.index.schema import SCHEMA_VERSION

__all__ = ["SCHEMA_VERSION", "IndexDB", "sqlite_pool"]
