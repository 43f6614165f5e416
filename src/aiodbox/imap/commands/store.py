"""``STORE`` / ``UID STORE`` (with CONDSTORE ``UNCHANGEDSINCE``), and flag-list parsing
shared with APPEND."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from aiodbox.imap.commands.base import CommandError, Reply, bad, ok
from aiodbox.imap.protocol import Store, StoreMode
from aiodbox.imap.protocol import responses as r
from aiodbox.imap.protocol.sequence import compact
from aiodbox.imap.selected import flag_list_bytes, system_flag_bit

if TYPE_CHECKING:
    from aiodbox.imap.connection import ImapConnection

_MODES = {StoreMode.ADD: "add", StoreMode.REMOVE: "remove", StoreMode.REPLACE: "replace"}


def parse_flags(flags: Iterable[str], command: str) -> tuple[int, list[str]]:
    """System flag bits and keywords of a client's flag list.

    Raises:
        CommandError: ``\\Recent`` or an unknown system flag (BAD, as Dovecot).
    """
    bits = 0
    keywords: list[str] = []
    for flag in flags:
        if flag.startswith("\\"):
            bit = system_flag_bit(flag)
            if bit is None:
                raise CommandError(
                    bad(f"Error in IMAP command {command}: Invalid system flag {flag.upper()}")
                )
            bits |= bit
        elif flag.lower() not in (k.lower() for k in keywords):
            keywords.append(flag)
    return bits, keywords


async def store(conn: ImapConnection, cmd: Store) -> Reply:
    """``[UID] STORE set [(UNCHANGEDSINCE n)] [+|-]FLAGS[.SILENT] (flags)``."""
    sel = conn.selected
    assert sel is not None
    name = "UID STORE" if cmd.uid else "STORE"
    bits, keywords = parse_flags(cmd.flags, name)
    indices = sel.indices(cmd.sequence_set, uid=cmd.uid)
    if sel.readonly:
        return ok("Store ignored with read-only mailbox.")
    if cmd.unchanged_since is not None and not sel.condstore:
        # RFC 7162 §3.1: UNCHANGEDSINCE is a CONDSTORE-enabling modifier.
        conn.enabled = conn.enabled | {"CONDSTORE"}
        sel.condstore = True
    if not indices:
        return ok("Store completed.")
    uids = [sel.uids[i] for i in indices]
    result = await sel.mailbox.store(
        uids, _MODES[cmd.mode], bits, keywords, unchanged_since=cmd.unchanged_since
    )
    sel.note_own_change(result.modseq)
    out = conn.output
    for line in sel.keyword_updates():
        out.buffer(line)
    modified = set(result.modified)
    view = sel.view
    for i, uid in zip(indices, uids, strict=True):
        if uid in modified:
            continue
        vi = view.index_of(uid)
        if vi is None:
            continue
        items: list[bytes] = []
        if not cmd.silent:
            flags = flag_list_bytes(view.flags[vi], view.keywords[vi], sel.is_recent(uid))
            items.append(b"FLAGS " + flags)
        if cmd.uid or (sel.qresync and items):
            items.append(r.fetch_uid(uid))
        if sel.condstore:
            items.append(r.fetch_modseq(view.modseqs[vi]))
        if items and (not cmd.silent or sel.condstore):
            out.buffer(r.fetch_response(i + 1, items))
            if out.paused:
                await out.drain()
    out.flush()
    if modified:
        numbers = sorted(modified) if cmd.uid else [sel.seq_of(u) or 0 for u in modified]
        code = r.ResponseCode("MODIFIED", compact(n for n in numbers if n))
        return ok("Conditional STORE failed", code)
    return ok("Store completed.")
