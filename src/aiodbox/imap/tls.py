"""TLS for IMAP: the server context from ``[tls]`` (STARTTLS and implicit TLS).

Loading the certificate reads two small files; do it while setting the server up,
before it accepts connections (the serve command does it before the loop runs).
"""

from __future__ import annotations

import ssl

from aiodbox.config import TlsConfig


class TlsConfigError(Exception):
    """``[tls]`` is incomplete or its files cannot be loaded."""


def server_context(config: TlsConfig) -> ssl.SSLContext | None:
    """A server-side context for ``config``, or None when no certificate is configured.

    TLS 1.2 is the minimum; Python's defaults apply otherwise (secure ciphers, no
    compression).  Client certificates are not asked for, so no CA store is loaded.

    Raises:
        TlsConfigError: Only one of ``cert``/``key`` is set, or loading them failed.
    """
    if config.cert is None and config.key is None:
        return None
    if config.cert is None or config.key is None:
        raise TlsConfigError("[tls] needs both cert and key")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(config.cert), str(config.key))
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError(f"[tls] cannot load {config.cert} / {config.key}: {exc}") from exc
    return ctx
