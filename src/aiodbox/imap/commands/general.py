"""Commands valid in any state: CAPABILITY, NOOP, LOGOUT, ID; and ENABLE, NAMESPACE."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from aiodbox import __version__
from aiodbox.imap.capabilities import ENABLEABLE
from aiodbox.imap.commands.base import Reply, ok
from aiodbox.imap.protocol import Capability, Enable, Id, Logout, Namespace, Noop
from aiodbox.imap.protocol import responses as r
from aiodbox.storage.names import SEPARATOR

if TYPE_CHECKING:
    from aiodbox.imap.connection import ImapConnection

log = logging.getLogger("aiodbox.imap")

SERVER_ID = {"name": "aiodbox", "version": __version__}
"""What ``ID`` tells the client about the server."""


async def capability(conn: ImapConnection, cmd: Capability) -> Reply:
    """``CAPABILITY``: the list depends on the state and on TLS."""
    conn.output.write(r.capability_response(conn.capabilities()))
    return ok("Capability completed.")


async def noop(conn: ImapConnection, cmd: Noop) -> Reply:
    """``NOOP``: the connection sends the pending updates before this reply."""
    return ok("NOOP completed.")


async def logout(conn: ImapConnection, cmd: Logout) -> Reply:
    """``LOGOUT``: ``* BYE``, the tagged OK, then close."""
    conn.output.write(r.bye("Logging out"))

    async def close() -> None:
        conn.close(None)

    return Reply("OK", "Logout completed.", after=close)


async def id_(conn: ImapConnection, cmd: Id) -> Reply:
    """``ID`` (RFC 2971): log what the client says, answer with the server's name."""
    if cmd.parameters:
        log.debug(
            "ip=%s client ID %s",
            conn.peer_ip,
            " ".join(f"{k}={v!r}" for k, v in cmd.parameters[:30]),
        )
    conn.output.write(r.id_response(SERVER_ID))
    return ok("ID completed.")


async def enable(conn: ImapConnection, cmd: Enable) -> Reply:
    """``ENABLE`` (RFC 5161): CONDSTORE and QRESYNC; anything else is ignored."""
    newly = [
        c for c in dict.fromkeys(cmd.capabilities) if c in ENABLEABLE and c not in conn.enabled
    ]
    conn.enabled = conn.enabled | frozenset(newly)
    conn.output.write(r.enabled_response(newly))
    return ok("Enabled.")


async def namespace(conn: ImapConnection, cmd: Namespace) -> Reply:
    """``NAMESPACE`` (RFC 2342): one personal namespace, no prefix."""
    conn.output.write(r.namespace_response([("", SEPARATOR)], None, None))
    return ok("Namespace completed.")
