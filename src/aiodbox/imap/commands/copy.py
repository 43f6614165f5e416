"""``COPY``/``UID COPY`` (UIDPLUS ``COPYUID``) and ``MOVE``/``UID MOVE`` (RFC 6851)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiodbox.imap.commands.base import Reply, no, ok
from aiodbox.imap.protocol import Copy, Move
from aiodbox.imap.protocol import responses as r
from aiodbox.storage.errors import MailboxNotFound

if TYPE_CHECKING:
    from aiodbox.imap.connection import ImapConnection


async def copy(conn: ImapConnection, cmd: Copy) -> Reply:
    """``[UID] COPY set mailbox``."""
    return await _transfer(conn, cmd, move=False)


async def move(conn: ImapConnection, cmd: Move) -> Reply:
    """``[UID] MOVE set mailbox``: ``* OK [COPYUID ...]``, the expunges, then OK."""
    return await _transfer(conn, cmd, move=True)


async def _transfer(conn: ImapConnection, cmd: Copy | Move, *, move: bool) -> Reply:
    sel = conn.selected
    user = conn.user
    assert sel is not None and user is not None
    indices = sel.indices(cmd.sequence_set, uid=cmd.uid)
    if not indices:
        return ok("No messages found.")
    uids = [sel.uids[i] for i in indices]
    try:
        dest = await user.open_mailbox(cmd.mailbox, load_view=False)
    except MailboxNotFound:
        return no(f"Mailbox doesn't exist: {cmd.mailbox}", r.TRYCREATE)
    try:
        if move:
            result = await sel.mailbox.move(uids, dest)
        else:
            result = await sel.mailbox.copy(uids, dest)
    finally:
        await dest.close()
    if not result.copied:
        return no("Some of the requested messages no longer exist.", r.EXPUNGEISSUED)
    assert result.dest_uidvalidity is not None
    code = r.ResponseCode.copyuid(
        result.dest_uidvalidity,
        [src for src, _ in result.copied],
        [dst for _, dst in result.copied],
    )
    if move:
        conn.output.write(r.untagged_status("OK", "Moved UIDs.", code))
        return ok("Move completed.")
    return ok("Copy completed.", code)
