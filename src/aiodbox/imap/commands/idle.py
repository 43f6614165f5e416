"""``IDLE`` (RFC 2177): the handler only starts it; the connection runs it without a task
(see :mod:`aiodbox.imap.connection`) until ``DONE``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiodbox.imap.commands.base import Reply
from aiodbox.imap.protocol import Idle
from aiodbox.imap.protocol import responses as r

if TYPE_CHECKING:
    from aiodbox.imap.connection import ImapConnection


async def idle(conn: ImapConnection, cmd: Idle) -> Reply | None:
    """Send what is pending, ``+ idling``, and let the connection wait for ``DONE``."""
    conn.send_updates(allow_expunge=True)
    conn.output.write(r.continuation("idling"))
    conn.start_idle(cmd.tag)
    return None
