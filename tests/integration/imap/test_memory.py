"""Memory per idle connection: 1000 logged-in connections with INBOX selected.

The server runs in a process of its own; its proportional set size (PSS, from
``/proc/<pid>/smaps_rollup``) is read before and after the connections are opened.
Target (issue 6): at most 40 KiB per connection.  The clients are blocking sockets in a
worker thread (a pipelined LOGIN + SELECT each), so the test loop stays free.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

CONNECTIONS = 1000
TARGET_BYTES = 40 << 10


def pss(pid: int) -> int:
    """Proportional set size of ``pid`` in bytes."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no Pss line")


def start_server(root: Path, fmt: str, *extra: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.imap.server_process", str(root), fmt, *extra],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[3],
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("PORT "), line
    return proc, int(line.split()[1])


def open_selected(port: int, n: int) -> list[socket.socket]:
    """``n`` connections, each logged in with INBOX selected (pipelined commands)."""
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"a LOGIN alice secret\r\nb SELECT INBOX\r\n")
        socks.append(s)
    for s in socks:
        buf = b""
        while b"\r\nb OK" not in buf:
            chunk = s.recv(65536)
            assert chunk, buf
            buf += chunk
    return socks


def measure(root: Path, fmt: str, *extra: str) -> float:
    limits = (
        f"max_connections_per_user={CONNECTIONS + 100}",
        f"max_connections_per_ip={CONNECTIONS + 100}",
    )
    proc, port = start_server(root, fmt, *limits, *extra)
    try:
        warm = open_selected(port, 20)  # the user, its index and INBOX's view exist now
        time.sleep(0.5)
        before = pss(proc.pid)
        socks = open_selected(port, CONNECTIONS)
        time.sleep(0.5)
        after = pss(proc.pid)
        for s in socks + warm:
            s.close()
        return (after - before) / CONNECTIONS
    finally:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        proc.wait(timeout=30)
        proc.stdout.close()


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="needs Linux smaps_rollup")
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_memory_per_idle_selected_connection(tmp_path: Path, loop: str) -> None:
    extra = ("--uvloop",) if loop == "uvloop" else ()
    per_connection = await asyncio.to_thread(measure, tmp_path, "mdbox", *extra)
    print(f"\n{loop}: {per_connection / 1024:.1f} KiB PSS per idle connection with INBOX selected")
    assert per_connection <= TARGET_BYTES, per_connection
