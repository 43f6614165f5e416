"""Selecting and leaving a mailbox: SELECT, EXAMINE, CLOSE, UNSELECT; CHECK, EXPUNGE.

SELECT answers as Dovecot does (FLAGS, PERMANENTFLAGS, EXISTS, RECENT, UNSEEN,
UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ with CONDSTORE) and supports the RFC 7162 QRESYNC
parameter: flag changes since the client's modseq come as FETCH, and expunged UIDs as
``VANISHED (EARLIER)``.  The index keeps no per-modseq record of old expunges for this,
so (as RFC 7162 §3.2.5.1 allows a server without that record) every UID the client may
know (its known-uids, or ``1:UIDNEXT-1``) that is no longer in the mailbox is reported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiodbox.imap.commands.base import Reply, bad, no, ok
from aiodbox.imap.protocol import Check, Close, Expunge, QResync, Select, SequenceSet, Unselect
from aiodbox.imap.protocol import responses as r
from aiodbox.imap.selected import (
    SelectedMailbox,
    flag_list_bytes,
    missing_uids,
    vanished_earlier,
)
from aiodbox.storage.errors import MailboxNotFound

if TYPE_CHECKING:
    from aiodbox.imap.connection import ImapConnection

_SEEN = 1
_ODD_TO_ONE = bytes(b & 1 for b in range(256))


def first_unseen(sel: SelectedMailbox) -> int | None:
    """Sequence number of the first message without ``\\Seen`` (C-speed scan)."""
    view = sel.view
    if view.uids is not sel.uids:  # pragma: no cover - just selected: same array
        return None
    pos = view.flags.tobytes()[: sel.count].translate(_ODD_TO_ONE).find(b"\x00")
    return None if pos < 0 else pos + 1


async def select(conn: ImapConnection, cmd: Select) -> Reply:
    """``SELECT``/``EXAMINE name [(CONDSTORE | QRESYNC (...))]``."""
    user = conn.user
    assert user is not None
    out = conn.output
    if cmd.qresync is not None and "QRESYNC" not in conn.enabled:
        return bad("QRESYNC isn't enabled")
    if conn.selected is not None:
        await conn.unselect()
        out.write(r.untagged_status("OK", "Previous mailbox closed.", r.CLOSED))
    try:
        mailbox = await user.open_mailbox(cmd.mailbox)
    except MailboxNotFound:
        return no(f"Mailbox doesn't exist: {cmd.mailbox}", r.NONEXISTENT)
    try:
        await conn.server.watches.get(mailbox).sync()
    except BaseException:
        await mailbox.close()
        raise
    if cmd.condstore and "CONDSTORE" not in conn.enabled:
        conn.enabled = conn.enabled | {"CONDSTORE"}
    sel = SelectedMailbox(
        mailbox,
        readonly=cmd.readonly,
        condstore="CONDSTORE" in conn.enabled,
        qresync="QRESYNC" in conn.enabled,
    )
    await conn.select(sel)
    await sel.claim_recent()
    view = sel.view
    for line in sel.flags_responses():
        out.buffer(line)
    out.buffer(r.exists_response(sel.count))
    out.buffer(sel.recent_response())
    unseen = first_unseen(sel)
    if unseen is not None:
        out.buffer(r.untagged_status("OK", "First unseen.", r.ResponseCode.unseen(unseen)))
    out.buffer(r.untagged_status("OK", "UIDs valid", r.ResponseCode.uidvalidity(view.uidvalidity)))
    out.buffer(r.untagged_status("OK", "Predicted next UID", r.ResponseCode.uidnext(view.uidnext)))
    if sel.condstore:
        out.buffer(
            r.untagged_status("OK", "Highest", r.ResponseCode.highestmodseq(view.highestmodseq))
        )
    if cmd.qresync is not None and cmd.qresync.uidvalidity == view.uidvalidity:
        await _qresync(conn, sel, cmd.qresync)
    await out.drain()
    if cmd.readonly:
        return ok("Examine completed.", r.READ_ONLY)
    return ok("Select completed.", r.READ_WRITE)


async def _qresync(conn: ImapConnection, sel: SelectedMailbox, q: QResync) -> None:
    out = conn.output
    view = sel.view
    known = q.known_uids or SequenceSet(((1, None),))
    top = max(view.uidnext - 1, 0)
    wanted = [(lo, min(hi, top)) for lo, hi in known.resolve(top) if lo <= top]
    gone = missing_uids(wanted, sel.uids, sel.count)
    if gone:
        out.buffer(vanished_earlier(gone))
    for i in range(sel.count):
        if view.modseqs[i] > q.modseq:
            items = [
                r.fetch_uid(view.uids[i]),
                b"FLAGS "
                + flag_list_bytes(view.flags[i], view.keywords[i], sel.is_recent(view.uids[i])),
                r.fetch_modseq(view.modseqs[i]),
            ]
            out.buffer(r.fetch_response(i + 1, items))
            if out.paused:
                await out.drain()


async def close(conn: ImapConnection, cmd: Close) -> Reply:
    """``CLOSE``: expunge ``\\Deleted`` messages silently (unless read-only), unselect."""
    sel = conn.selected
    assert sel is not None
    if not sel.readonly:
        await sel.mailbox.expunge()
    await conn.unselect()
    return ok("Close completed.")


async def unselect(conn: ImapConnection, cmd: Unselect) -> Reply:
    """``UNSELECT`` (RFC 3691): leave without expunging."""
    await conn.unselect()
    return ok("Unselect completed.")


async def check(conn: ImapConnection, cmd: Check) -> Reply:
    """``CHECK``: nothing to checkpoint (every change is durable when answered)."""
    return ok("Check completed.")


async def expunge(conn: ImapConnection, cmd: Expunge) -> Reply:
    """``EXPUNGE`` and ``UID EXPUNGE set`` (RFC 4315).

    The ``EXPUNGE`` responses are the selected mailbox's updates, sent before the tagged
    reply.  In a read-only mailbox nothing happens (as Dovecot).
    """
    sel = conn.selected
    assert sel is not None
    if sel.readonly:
        return ok("Expunge completed.")
    if cmd.uid_set is not None:
        uids = [sel.uids[i] for i in sel.indices(cmd.uid_set, uid=True)]
        if uids:
            await sel.mailbox.expunge(uids)
    else:
        await sel.mailbox.expunge()
    return ok("Expunge completed.")
