"""A real IMAP server on 127.0.0.1 (port 0) over a real store (sdbox and mdbox, posix FS)
and a passwd-file with ``{PLAIN}`` passwords.

Blocking clients (imaplib, imapclient, mbsync) run in threads (``asyncio.to_thread``);
raw transcript tests use :class:`~tests.integration.imap.client.RawClient` on the loop.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from aiodbox.auth import PasswdFileAuthenticator
from aiodbox.config import Config, config_from_dict
from aiodbox.imap.server import ImapServer
from aiodbox.storage import Storage
from tests.integration.imap.client import RawClient

USERS = {"alice": "secret", "bob": "hunter2"}
"""Test users and their passwords."""


@dataclasses.dataclass
class Env:
    """A running server and what it runs on."""

    server: ImapServer
    storage: Storage
    auth: PasswdFileAuthenticator
    config: Config
    root: Path

    @property
    def port(self) -> int:
        return self.server.addresses[0][1]

    async def client(self, *, login: str | None = None) -> RawClient:
        """A raw client, greeted (and logged in as ``login`` when given)."""
        c = await RawClient.connect("127.0.0.1", self.port)
        if login is not None:
            await c.ok(f"LOGIN {login} {USERS[login]}")
        return c


def write_users(path: Path) -> None:
    path.write_text("".join(f"{u}:{{PLAIN}}{p}::::::\n" for u, p in USERS.items()))


def make_config(
    root: Path,
    fmt: str,
    *,
    auth: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    **imap: Any,
) -> Config:
    raw: dict[str, Any] = {
        "storage": {
            "format": fmt,
            "mail_root": "mail",
            "index_root": "index",
            "fs": "posix",
            "fsync": "never",
        },
        "imap": {"listen": ["127.0.0.1:0"], **imap},
        "auth": {
            "passwd_file": "users",
            "allow_plaintext": True,
            "failure_delay": 0,
            **(auth or {}),
        },
        **(extra or {}),
    }
    return config_from_dict(raw, root)


@pytest.fixture
def make_env(tmp_path: Path) -> Callable[..., AsyncIterator[Env]]:
    """``async for env in make_env(fmt=..., **imap_settings)``: a server for one test."""
    write_users(tmp_path / "users")

    async def make(
        *,
        fmt: str = "sdbox",
        failure_delay: float = 0.0,
        auth: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
        **imap: Any,
    ) -> AsyncIterator[Env]:
        config = make_config(tmp_path, fmt, auth=auth, extra=extra, **imap)
        storage = Storage(config.storage)
        auth = PasswdFileAuthenticator(config.auth.passwd_file, failure_delay=failure_delay)
        server = ImapServer(config, storage, auth)
        await server.start()
        try:
            yield Env(server, storage, auth, config, tmp_path)
        finally:
            await server.shutdown(timeout=5)
            await auth.aclose()
            await storage.close()

    return make


@pytest.fixture(params=["sdbox", "mdbox"])
async def env(
    request: pytest.FixtureRequest, make_env: Callable[..., AsyncIterator[Env]]
) -> AsyncIterator[Env]:
    """A server over sdbox, then over mdbox."""
    async for e in make_env(fmt=request.param):
        yield e
