"""Importers of other mail stores.

``dovecot_index`` and ``dovecot_list`` are sans-IO parsers of Dovecot 2.3's
index, transaction-log and mailbox-list files; ``dovecot_layout`` finds those
files in an sdbox/mdbox mail root with blocking calls (run it in a thread).
"""

from __future__ import annotations

from aiodbox.importers.dovecot_index import (
    DovecotIndexError,
    DovecotMailboxIndex,
    DovecotMessage,
    IndexState,
    MdboxMap,
    MdboxMapEntry,
    read_mailbox_index,
    read_mdbox_map,
    replay_index,
)
from aiodbox.importers.dovecot_layout import (
    DovecotLayoutError,
    DovecotMailboxDir,
    DovecotRoot,
    load_mailbox_index,
    load_mailbox_list,
    load_mdbox_map,
    load_subscriptions,
    scan_dovecot_root,
)
from aiodbox.importers.dovecot_list import (
    MailboxListEntry,
    decode_mutf7,
    parse_subscriptions,
    parse_uidvalidity_file,
    read_mailbox_list_index,
)

__all__ = [
    "DovecotIndexError",
    "DovecotLayoutError",
    "DovecotMailboxDir",
    "DovecotMailboxIndex",
    "DovecotMessage",
    "DovecotRoot",
    "IndexState",
    "MailboxListEntry",
    "MdboxMap",
    "MdboxMapEntry",
    "decode_mutf7",
    "load_mailbox_index",
    "load_mailbox_list",
    "load_mdbox_map",
    "load_subscriptions",
    "parse_subscriptions",
    "parse_uidvalidity_file",
    "read_mailbox_index",
    "read_mailbox_list_index",
    "read_mdbox_map",
    "replay_index",
    "scan_dovecot_root",
]
