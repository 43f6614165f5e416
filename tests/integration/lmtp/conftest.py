"""A real LMTP server on 127.0.0.1 (port 0) over a real store and passwd-file.

Clients are blocking (``smtplib.LMTP``), so tests run them with ``asyncio.to_thread``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from aiodbox.auth import PasswdFileAuthenticator
from aiodbox.config import StorageConfig
from aiodbox.fs import FS
from aiodbox.lmtp import LmtpServer, StorageDelivery
from aiodbox.storage import Storage

USERS = ("bob", "carol", "dave")
MAX_SIZE = 64 * 1024


@dataclasses.dataclass
class Env:
    server: LmtpServer
    storage: Storage
    auth: PasswdFileAuthenticator
    root: Path

    @property
    def port(self) -> int:
        return self.server.addresses[0][1]

    async def inbox(self, user: str) -> list[bytes]:
        """Every message in ``user``'s INBOX, in UID order (empty if the user has none)."""
        account = await self.storage.user(user)
        mbox = await account.open_mailbox("INBOX")
        try:
            await mbox.sync()
            out = []
            for rec in await mbox.records(list(mbox.view.uids)):
                msg = await mbox.open_message(rec)
                try:
                    out.append(b"".join([chunk async for chunk in msg.open_body()]))
                finally:
                    await msg.aclose()
            return out
        finally:
            await mbox.close()


def write_users(path: Path, users: tuple[str, ...] = USERS) -> None:
    path.write_text("".join(f"{u}:{{PLAIN}}pass::::::\n" for u in users))


@pytest.fixture
def passwd(tmp_path: Path) -> Path:
    path = tmp_path / "users"
    write_users(path)
    return path


@pytest.fixture
def make_env(tmp_path: Path, passwd: Path) -> Callable[..., AsyncIterator[Env]]:
    async def make(
        *, fmt: str = "sdbox", fs: FS | None = None, spec: str = "posix", max_size: int = MAX_SIZE
    ) -> AsyncIterator[Env]:
        cfg = StorageConfig(
            format=fmt,
            mail_root=tmp_path / "mail",
            index_root=tmp_path / "index",
            fs=spec,
            fsync="never",
        )
        storage = Storage(cfg, fs=fs)
        auth = PasswdFileAuthenticator(passwd, failure_delay=0)
        server = LmtpServer(
            StorageDelivery(storage, auth),
            listen=["127.0.0.1:0"],
            max_message_size=max_size,
            hostname="test.invalid",
        )
        await server.start()
        try:
            yield Env(server, storage, auth, tmp_path)
        finally:
            await server.shutdown(timeout=5)
            await auth.aclose()
            await storage.close()

    return make


@pytest.fixture(params=["sdbox", "mdbox"])
async def env(
    request: pytest.FixtureRequest, make_env: Callable[..., AsyncIterator[Env]]
) -> AsyncIterator[Env]:
    async for e in make_env(fmt=request.param):
        yield e
