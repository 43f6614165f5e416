"""A delivery while an IMAP client has INBOX selected: the client is told (EXISTS).

Both servers run in this process on one storage, as a worker of ``aiodbox serve`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
import smtplib
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from aiodbox.auth import PasswdFileAuthenticator
from aiodbox.config import config_from_dict
from aiodbox.imap.server import ImapServer
from aiodbox.lmtp import LmtpServer, StorageDelivery
from aiodbox.storage import Storage


@pytest.fixture
async def servers(tmp_path: Path, passwd: Path) -> AsyncIterator[tuple[int, int]]:
    config = config_from_dict(
        {
            "storage": {"format": "mdbox", "fsync": "never"},
            "imap": {"listen": ["127.0.0.1:0"]},
            "auth": {"passwd_file": str(passwd), "allow_plaintext": True, "failure_delay": 0},
        },
        tmp_path,
    )
    storage = Storage(config.storage)
    auth = PasswdFileAuthenticator(passwd, failure_delay=0)
    imap = ImapServer(config, storage, auth)
    lmtp = LmtpServer(StorageDelivery(storage, auth), listen=["127.0.0.1:0"])
    await imap.start()
    await lmtp.start()
    try:
        yield imap.addresses[0][1], lmtp.addresses[0][1]
    finally:
        await imap.shutdown(timeout=5)
        await lmtp.shutdown(timeout=5)
        await auth.aclose()
        await storage.close()


def _deliver(port: int, body: bytes) -> None:
    with smtplib.LMTP("127.0.0.1", port) as client:
        assert client.sendmail("a@example.test", ["bob"], body) == {}


async def test_delivery_to_a_selected_inbox_gives_exists(servers: tuple[int, int]) -> None:
    imap_port, lmtp_port = servers

    def client() -> tuple[bytes, bytes]:
        imap = imaplib.IMAP4("127.0.0.1", imap_port)
        try:
            imap.login("bob", "pass")
            assert imap.select("INBOX") == ("OK", [b"0"])
            _deliver(lmtp_port, b"Subject: new\r\n\r\nhello\r\n")
            imap.noop()
            exists = imap.untagged_responses["EXISTS"][-1]
            _, data = imap.fetch(exists.decode(), "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
            imap.logout()
            return exists, data[0][1]
        finally:
            with contextlib.suppress(OSError):  # closed already after LOGOUT
                imap.shutdown()

    exists, subject = await asyncio.to_thread(client)
    assert exists == b"1"
    assert subject.startswith(b"Subject: new")


async def test_idle_client_is_told_without_asking(servers: tuple[int, int]) -> None:
    imap_port, lmtp_port = servers

    def client() -> list[bytes]:
        with socket.create_connection(("127.0.0.1", imap_port), timeout=30) as s:
            f = s.makefile("rb")
            f.readline()
            s.sendall(b"a LOGIN bob pass\r\nb SELECT INBOX\r\n")
            while not f.readline().startswith(b"b OK"):
                pass
            s.sendall(b"c IDLE\r\n")
            assert f.readline().startswith(b"+ ")
            _deliver(lmtp_port, b"Subject: pushed\r\n\r\nhello\r\n")
            pushed = f.readline()  # no command sent: the server pushes the news
            s.sendall(b"DONE\r\nd LOGOUT\r\n")
            return [pushed]

    [pushed] = await asyncio.to_thread(client)
    assert pushed == b"* 1 EXISTS\r\n"
