"""The IMAP bench's harness and load client against a real Dovecot 2.3.

Starts Debian's Dovecot with the harness's generated config (sdbox, 127.0.0.1, a free
port), logs in with the raw-socket client, appends three messages with pipelined
LITERAL+ APPENDs, fetches them back and compares them byte for byte, and checks that the
PSS helper sums a plausible amount over the server's process tree.  Skipped only when
Dovecot is not installed.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import dovecot_harness as harness  # noqa: E402
import imap_load  # noqa: E402

needs_dovecot = pytest.mark.skipif(
    not harness.dovecot_installed(),
    reason=f"Dovecot is not installed ({harness.DOVECOT_BIN}): apt-get install dovecot-imapd",
)

USER = "bench"
PASSWORD = 'pa ss"wo\\rd'  # needs quoting and escaping in LOGIN


@pytest.fixture
def dovecot() -> Iterator[harness.DovecotServer]:
    """A started Dovecot.  A plain (not async) fixture: it forks and waits before the test's
    event loop runs, so nothing here can hold that loop."""
    workdir = harness.make_workdir(None, "test-bench-harness-")
    server = harness.DovecotServer(workdir, "sdbox")
    server.set_users({USER: PASSWORD})
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.interop
@needs_dovecot
async def test_append_fetch_byte_exact_and_pss(dovecot: harness.DovecotServer) -> None:
    host, port = dovecot.host, dovecot.port
    assert host == "127.0.0.1"
    messages = [
        imap_load.make_message(i, size, "test") for i, size in enumerate((300, 4096, 70001))
    ]
    assert [len(m) for m in messages] == [300, 4096, 70001]
    assert all(b"\n" not in m.replace(b"\r\n", b"") for m in messages)

    client, exists = await imap_load.open_session(host, port, USER, PASSWORD)
    try:
        assert exists == 0
        assert client.literal_plus, "Dovecot announces LITERAL+"
        responses = await client.append_many("INBOX", messages, window=3)
        assert [r.status for r in responses] == ["OK"] * 3
        assert all("APPENDUID" in r.text for r in responses)

        result = await client.fetch_bodies("1:*", imap_load.LiteralMode.KEEP)
        assert [b.uid for b in result.bodies] == [1, 2, 3]
        assert [b.data for b in result.bodies] == messages

        hashed = await client.fetch_bodies("1:*", imap_load.LiteralMode.SHA256)
        expected = collections.Counter((len(m), hashlib.sha256(m).hexdigest()) for m in messages)
        assert imap_load.check_bodies(hashed.bodies, expected) is None
        assert imap_load.check_bodies(hashed.bodies[:2], expected) is not None

        latency = await client.noop()
        assert 0 < latency < 5.0

        pids, memory = await asyncio.to_thread(lambda: (dovecot.pids(), dovecot.memory_kib()))
        assert pids[0] == dovecot.pid
        assert len(pids) >= 3  # master, its helper services, the imap process
        assert memory["processes"] >= 3
        # A master with its log/config/anvil/auth services and one imap process: a few MiB,
        # far from zero and far from a GiB.
        assert 1_000 < memory["Pss"] < 500_000, memory
        assert 0 < memory["Pss_Anon"] <= memory["Pss"] <= memory["Rss"], memory
    finally:
        await client.logout()


def test_aiodbox_config_and_users_file_are_accepted(tmp_path: Path) -> None:
    """The config and passwd-file the bench writes for aiodbox load with aiodbox's own
    readers (a renamed key would otherwise surface only as "aiodbox not available")."""
    from aiodbox.auth.passwd_file import load_passwd_file
    from aiodbox.config import load_config

    server = harness.AiodboxServer(tmp_path, "mdbox", fs="uring")
    server.port = 1143
    server.set_users({USER: "a pass word"})
    server.prepare()
    config = load_config(server.conf_path)
    assert config.storage.format == "mdbox"
    assert config.storage.fs == "uring"
    assert config.storage.fsync == "always"
    assert config.imap.listen == ("127.0.0.1:1143",)
    assert config.auth.allow_plaintext
    assert config.imap.max_connections_per_user >= 1000
    assert config.imap.max_connections_per_ip >= 1000
    entry = load_passwd_file(config.auth.passwd_file).get(USER)
    assert entry is not None
    assert entry.password == "{PLAIN}a pass word"
