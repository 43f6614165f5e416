"""The CAPABILITY lists, before and after login, shaped like Dovecot 2.3's.

Before login the list is short (what a client needs to log in: SASL-IR, LITERAL+,
STARTTLS when TLS is configured and not active yet, ``AUTH=`` mechanisms, or
``LOGINDISABLED`` when plaintext authentication is refused on this connection).  After
login it lists every extension the server implements; ``APPENDLIMIT=n`` carries the
configured literal limit (RFC 7889).
"""

from __future__ import annotations

from aiodbox.auth.sasl import MECHANISMS

PRELOGIN_BASE: tuple[str, ...] = ("IMAP4rev1", "SASL-IR", "ID", "ENABLE", "IDLE", "LITERAL+")
"""Advertised to every client before login."""

POSTLOGIN_BASE: tuple[str, ...] = (
    "IMAP4rev1",
    "SASL-IR",
    "ID",
    "ENABLE",
    "IDLE",
    "MULTIAPPEND",
    "UNSELECT",
    "CHILDREN",
    "NAMESPACE",
    "UIDPLUS",
    "LIST-EXTENDED",
    "CONDSTORE",
    "QRESYNC",
    "ESEARCH",
    "SEARCHRES",
    "WITHIN",
    "LIST-STATUS",
    "BINARY",
    "MOVE",
    "STATUS=SIZE",
    "LITERAL+",
    "SPECIAL-USE",
    "CREATE-SPECIAL-USE",
)
"""Advertised after login (``APPENDLIMIT=n`` is appended)."""

ENABLEABLE: frozenset[str] = frozenset({"CONDSTORE", "QRESYNC"})
"""Extensions ``ENABLE`` switches on (RFC 5161); others are ignored, as the RFC says."""


def prelogin(*, tls_active: bool, starttls_available: bool, plaintext_allowed: bool) -> list[str]:
    """The capabilities of a connection that is not authenticated yet.

    Args:
        tls_active: The connection is encrypted (implicit TLS or after STARTTLS).
        starttls_available: A TLS context is configured.
        plaintext_allowed: ``[auth] allow_plaintext``: LOGIN and PLAIN without TLS.
    """
    caps = list(PRELOGIN_BASE)
    if starttls_available and not tls_active:
        caps.append("STARTTLS")
    if tls_active or plaintext_allowed:
        caps.extend(f"AUTH={m}" for m in MECHANISMS)
    else:
        caps.append("LOGINDISABLED")
    return caps


def postlogin(append_limit: int) -> list[str]:
    """The capabilities of an authenticated connection."""
    return [*POSTLOGIN_BASE, f"APPENDLIMIT={append_limit}"]
