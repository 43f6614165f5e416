"""Not-authenticated state: LOGIN, AUTHENTICATE (PLAIN, LOGIN, SASL-IR), STARTTLS.

Passwords are refused on a connection without TLS unless ``[auth] allow_plaintext``
(Dovecot's ``disable_plaintext_auth``), before anything is checked.  The authenticator
delays failures itself, in a coroutine: a failing client waits, nobody else does.
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING

from aiodbox.auth.errors import SaslCancelled, SaslRemoteError
from aiodbox.auth.sasl import Challenge, Credentials, SaslServer
from aiodbox.imap.commands.base import Reply, bad, no, ok
from aiodbox.imap.protocol import Authenticate, Login, SaslResponse, StartTLS
from aiodbox.imap.protocol import responses as r

if TYPE_CHECKING:
    from aiodbox.imap.connection import ImapConnection

PLAINTEXT_REFUSED = "Plaintext authentication disallowed on non-secure (SSL/TLS) connections."


async def login(conn: ImapConnection, cmd: Login) -> Reply:
    """``LOGIN user password``."""
    if not conn.plaintext_ok:
        return no(PLAINTEXT_REFUSED, r.PRIVACYREQUIRED)
    password = cmd.password.encode("utf-8", "surrogateescape")
    return await conn.login(cmd.username, password)


async def authenticate(conn: ImapConnection, cmd: Authenticate) -> Reply:
    """``AUTHENTICATE mechanism [initial-response]`` with challenges as ``+`` lines."""
    if not conn.plaintext_ok:
        return no(PLAINTEXT_REFUSED, r.PRIVACYREQUIRED)
    sasl = SaslServer()
    initial = cmd.initial_response
    try:
        step = sasl.start(cmd.mechanism, None if initial is None else _encode(initial, True))
    except SaslRemoteError as exc:
        if sasl.mechanism is None:
            return no("Unsupported authentication mechanism.")
        return bad(f"Invalid initial response: {exc}")
    while isinstance(step, Challenge):
        conn.output.write(b"+ " + step.encoded() + b"\r\n")
        conn.parser.expect_sasl_response()
        event = await conn.next_event()
        if not isinstance(event, SaslResponse):  # the connection was closed
            return bad("Authentication aborted.")
        if event.cancelled:
            return bad("Authentication aborted by client.")
        try:
            step = sasl.step(_encode(event.data, False))
        except SaslCancelled:
            return bad("Authentication aborted by client.")
        except SaslRemoteError as exc:
            return bad(f"Invalid authentication response: {exc}")
    assert isinstance(step, Credentials)
    return await conn.login(step.authcid, step.password)


def _encode(data: bytes, initial: bool) -> bytes:
    """Base64 again for :class:`SaslServer` (the protocol core has decoded it)."""
    if initial and not data:
        return b"="
    return base64.b64encode(data)


async def starttls(conn: ImapConnection, cmd: StartTLS) -> Reply:
    """``STARTTLS``: the handshake starts after the tagged OK."""
    if conn.tls:
        return bad("TLS is already active.")
    if conn.server.ssl_context is None:
        return bad("TLS support isn't enabled.")
    return Reply("OK", "Begin TLS negotiation now.", after=conn.start_tls)


__all__ = ["authenticate", "login", "ok", "starttls"]
