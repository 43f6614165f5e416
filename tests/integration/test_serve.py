"""``aiodbox serve`` as a real process: IMAP and LMTP together, workers, signals, exit
codes, per-command log lines and the metrics endpoint.

The server runs as ``python -m aiodbox.cli.main`` (uvloop when installed, as in
production); blocking clients run in threads, the 200-connection test uses asyncio
streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
import os
import re
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

AIODBOX = [sys.executable, "-m", "aiodbox.cli.main"]
READY = re.compile(r"aiodbox: ready: (.*) \((\d+) workers?, pid (\d+)\)")


def write_config(
    root: Path, *, extra: str = "", users: tuple[str, ...] = ("alice", "bob"), fs: str = "posix"
) -> Path:
    (root / "users").write_text("".join(f"{u}:{{PLAIN}}secret-{u}::::::\n" for u in users))
    config = root / "aiodbox.toml"
    config.write_text(
        f"""
[storage]
format = "mdbox"
mail_root = "mail"
index_root = "index"
fs = "{fs}"
fsync = "never"

[imap]
listen = ["127.0.0.1:0"]
max_connections_per_user = 1000
max_connections_per_ip = 1000

[lmtp]
listen = ["127.0.0.1:0"]

[auth]
passwd_file = "users"
allow_plaintext = true
failure_delay = "0s"
{extra}
"""
    )
    return config


class Server:
    """A running ``aiodbox serve``; stderr is collected by a thread."""

    def __init__(self, config: Path, *args: str, cwd: Path | None = None) -> None:
        self.proc = subprocess.Popen(
            [*AIODBOX, "--config", str(config), "serve", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=cwd or config.parent,
            start_new_session=True,  # kill() takes the workers too
        )
        self.lines: list[str] = []
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.addresses: dict[str, tuple[str, int]] = {}
        self.pid = self.proc.pid

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.lines.append(line)
            m = READY.search(line)
            if m:
                for part in m.group(1).split(", "):
                    kind, spec = part.split(" ")
                    host, port = spec.rsplit(":", 1)
                    self.addresses.setdefault(kind, (host, int(port)))
                self._ready.set()

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise AssertionError("server did not start:\n" + "\n".join(self.lines[-30:]))

    def port(self, kind: str) -> int:
        return self.addresses[kind][1]

    def stop(self, timeout: float = 40) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        self._reader.join(5)
        return code

    def log_matching(self, needle: str) -> list[str]:
        return [line for line in self.lines if needle in line]

    def kill(self) -> None:
        """Make sure the processes are gone and the pipe closed."""
        if self.proc.poll() is None:  # (workers die with their parent: PR_SET_PDEATHSIG)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._reader.join(5)
        if self.proc.stderr is not None and not self._reader.is_alive():
            self.proc.stderr.close()


@contextlib.contextmanager
def serving(config: Path, *args: str) -> Iterator[Server]:
    server = Server(config, *args)
    try:
        server.wait_ready()
        yield server
    finally:
        server.kill()


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*AIODBOX, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def deliver(port: int, rcpts: list[str], body: bytes) -> list[int]:
    """One LMTP transaction; the DATA reply code of each recipient (LMTP sends one per
    accepted recipient, smtplib's ``sendmail`` reads only the first)."""
    with smtplib.LMTP("127.0.0.1", port) as client:
        client.ehlo()
        assert client.mail("sender@example.test")[0] == 250
        accepted = sum(1 for r in rcpts if client.rcpt(r)[0] == 250)
        codes = [client.data(body)[0]]
        codes += [client.getreply()[0] for _ in range(accepted - 1)]
        return codes


# ------------------------------------------------------------------ one process


def test_serve_imap_and_lmtp_then_sighup_and_sigterm(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    with serving(config, "--workers", "1") as server:
        assert set(server.addresses) == {"imap", "lmtp"}
        assert deliver(server.port("lmtp"), ["alice"], b"Subject: one\r\n\r\nbody\r\n") == [250]
        imap = imaplib.IMAP4("127.0.0.1", server.port("imap"))
        imap.login("alice", "secret-alice")
        assert imap.select("INBOX") == ("OK", [b"1"])
        _, data = imap.fetch("1", "(BODY.PEEK[])")
        raw = data[0][1]
        assert raw.startswith(b"Return-Path: <sender@example.test>\r\nDelivered-To: alice\r\n")
        assert raw.endswith(b"Subject: one\r\n\r\nbody\r\n")

        # A delivery while INBOX is selected shows up on the next command.
        deliver(server.port("lmtp"), ["alice", "bob"], b"Subject: two\r\n\r\nbody\r\n")
        imap.noop()
        assert imap.untagged_responses["EXISTS"][-1] == b"2"

        # SIGHUP re-reads the passwd-file: a user added meanwhile can log in.
        with (tmp_path / "users").open("a") as f:
            f.write("carol:{PLAIN}secret-carol::::::\n")
        server.proc.send_signal(signal.SIGHUP)
        for _ in range(100):
            probe = imaplib.IMAP4("127.0.0.1", server.port("imap"))
            try:
                probe.login("carol", "secret-carol")
                probe.logout()
                break
            except imaplib.IMAP4.error:
                probe.shutdown()
                time.sleep(0.1)
        else:
            raise AssertionError("carol cannot log in after SIGHUP")

        # SIGTERM: the selected client gets BYE, the server exits 0.
        code = server.stop()
        try:
            with pytest.raises((imaplib.IMAP4.abort, OSError)):
                imap.noop()
            assert imap.untagged_responses.get("BYE"), imap.untagged_responses
        finally:
            with contextlib.suppress(OSError):
                imap.shutdown()
    assert code == 0, "\n".join(server.lines[-20:])
    # One log line per command, from both servers.
    assert server.log_matching("aiodbox.lmtp[") and server.log_matching("aiodbox.imap[")
    [login] = [ln for ln in server.log_matching(" cmd=LOGIN ") if "user=alice" in ln]
    assert re.search(r"result=OK ms=[0-9.]+ in=\d+ out=\d+", login)
    [data] = [ln for ln in server.log_matching("cmd=DATA") if "user=alice,bob" in ln]
    assert "result=250" in data


def test_serve_logs_to_a_file(tmp_path: Path) -> None:
    config = write_config(tmp_path, extra='[log]\nfile = "aiodbox.log"\n')
    with serving(config, "--workers", "1") as server:
        deliver(server.port("lmtp"), ["bob"], b"Subject: x\r\n\r\ny\r\n")
        assert server.stop() == 0
    text = (tmp_path / "aiodbox.log").read_text()
    assert "cmd=DATA" in text and "user=bob" in text
    assert not server.log_matching("cmd=DATA")  # not on stderr


# ------------------------------------------------------------------ exit codes


def test_exit_codes(tmp_path: Path) -> None:
    # 2: bad arguments.
    assert run_cli("serve", "--workers", "0", cwd=tmp_path).returncode == 2
    assert run_cli("serve", "--bogus", cwd=tmp_path).returncode == 2
    # 3: no config at all.
    none = run_cli("serve", cwd=tmp_path)
    assert none.returncode == 3 and "--demo" in none.stderr
    # 3: a config that does not parse names the file and the line.
    bad = tmp_path / "bad.toml"
    bad.write_text('[storage]\nformat = "mdbox"\nmail_root = \n')
    result = run_cli("--config", str(bad), "serve", cwd=tmp_path)
    assert result.returncode == 3
    assert "bad.toml" in result.stderr and "line 3" in result.stderr
    # 3: metrics only on loopback.
    cfg = write_config(tmp_path, extra='[metrics]\nlisten = ["0.0.0.0:9100"]\n')
    result = run_cli("--config", str(cfg), "serve", cwd=tmp_path)
    assert result.returncode == 3 and "loopback" in result.stderr
    # 5: an FS spec that does not build.
    cfg = write_config(tmp_path, fs="nosuchbackend")
    result = run_cli("--config", str(cfg), "serve", cwd=tmp_path)
    assert result.returncode == 5 and "nosuchbackend" in result.stderr
    # 5: mail_root cannot be written (a file where the directory should be).
    cfg = write_config(tmp_path)
    (tmp_path / "mail").write_text("in the way")
    result = run_cli("--config", str(cfg), "serve", cwd=tmp_path)
    assert result.returncode == 5 and "mail_root" in result.stderr
    (tmp_path / "mail").unlink()
    # 1: the address is in use by something else.
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        text = cfg.read_text().replace(
            'listen = ["127.0.0.1:0"]\nmax', f'listen = ["127.0.0.1:{port}"]\nmax'
        )
        cfg.write_text(text)
        result = run_cli("--config", str(cfg), "serve", cwd=tmp_path)
    assert result.returncode == 1 and "in use" in result.stderr


# ------------------------------------------------------------------ metrics


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        return str(resp.read().decode())


@pytest.mark.parametrize("workers", ["1", "2"])
def test_metrics_endpoint(tmp_path: Path, workers: str) -> None:
    config = write_config(tmp_path, extra='[metrics]\nlisten = ["127.0.0.1:0"]\n')
    with serving(config, "--workers", workers) as server:
        [line] = server.log_matching("metrics on http://")
        port = int(line.rsplit(":", 1)[1].split("/")[0])
        deliver(server.port("lmtp"), ["alice"], b"Subject: m\r\n\r\nmetrics\r\n")
        imap = imaplib.IMAP4("127.0.0.1", server.port("imap"))
        imap.login("alice", "secret-alice")
        imap.select("INBOX")
        text = ""
        for _ in range(50):  # FS numbers are collected every 2 s
            text = _scrape(port)
            if any(n == "aiodbox_fs_operations_total" for n, _, _ in _samples(text)):
                break
            time.sleep(0.2)
        imap.logout()
        assert server.stop() == 0
    samples = _samples(text)

    def value(name: str, **labels: str) -> float:
        found = [v for n, lb, v in samples if n == name and labels.items() <= lb.items()]
        assert found, (name, labels)
        return sum(found)

    assert value("aiodbox_connections", protocol="imap") == 1
    assert value("aiodbox_command_seconds_count", protocol="lmtp", command="DATA") == 1
    assert value("aiodbox_command_seconds_count", protocol="imap", command="LOGIN") == 1
    assert value("aiodbox_command_seconds_bucket", protocol="lmtp", command="DATA", le="+Inf") == 1
    assert value("aiodbox_bytes_total", protocol="lmtp", direction="in") > 20
    assert value("aiodbox_bytes_total", protocol="imap", direction="out") > 0
    assert value("aiodbox_fs_operations_total", backend="posix", op="commit") >= 1
    assert value("aiodbox_fs_operation_seconds_total", backend="posix", op="commit") > 0
    assert value("aiodbox_fs_queue_depth", backend="posix") >= 0
    assert value("aiodbox_fs_threads", backend="posix") >= 1
    assert value("aiodbox_deliveries_total", result="ok") == 1
    assert value("aiodbox_prefetch_in_flight") >= 0


def _samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    from prometheus_client.parser import text_string_to_metric_families

    return [
        (sample.name, dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


# ------------------------------------------------------------------ four workers


class AsyncImap:
    """Just enough IMAP for many concurrent connections (no literals in replies)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.n = 0
        self.exists = 0
        self.reader: asyncio.StreamReader
        self.writer: asyncio.StreamWriter

    async def connect(self, port: int) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        greeting = await self.reader.readline()
        assert greeting.startswith(b"* OK"), greeting

    def tag(self) -> str:
        self.n += 1
        return f"{self.name}x{self.n}"

    async def command(self, text: str, literal: bytes | None = None) -> list[bytes]:
        tag = self.tag()
        if literal is None:
            self.writer.write(f"{tag} {text}\r\n".encode())
        else:
            self.writer.write(f"{tag} {text} {{{len(literal)}+}}\r\n".encode() + literal + b"\r\n")
        lines = []
        while True:
            line = await asyncio.wait_for(self.reader.readline(), 60)
            if not line:
                raise ConnectionError(f"{self.name}: connection closed")
            m = re.match(rb"\* (\d+) EXISTS", line)
            if m:
                self.exists = int(m.group(1))
            if line.startswith(tag.encode() + b" "):
                assert line.split()[1] == b"OK", (text, line)
                return lines
            lines.append(line)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.command("LOGOUT")
        self.writer.close()


async def sync_until(c: AsyncImap, count: int) -> None:
    """NOOP until the connection has been told of ``count`` messages."""
    deadline = time.monotonic() + 60
    while True:
        await c.command("NOOP")
        if c.exists >= count:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{c.name} sees {c.exists} messages, not {count}")
        await asyncio.sleep(0.1)


def _login_pids(server: Server) -> dict[str, int]:
    """Connection name → pid of the worker that logged it in (from the log lines)."""
    out = {}
    for line in server.log_matching(" cmd=LOGIN "):
        m = re.search(r"aiodbox\.imap\[(\d+)\].* tag=(\w+?)x\d+ result=OK", line)
        if m:
            out[m.group(2)] = int(m.group(1))
    return out


# This loop runs only the test's 200 clients (the server is other processes), so the
# blocking-callback guard has no product code to watch here; with four busy workers on a
# small machine it would only measure how often the test process gets a CPU.
@pytest.mark.slow
@pytest.mark.allow_slow_callbacks
async def test_four_workers_200_connections_all_see_every_change(tmp_path: Path) -> None:
    config = write_config(tmp_path, users=("shared",))
    server = Server(config, "--workers", "4")
    try:
        await asyncio.to_thread(server.wait_ready)
        imap_port = server.port("imap")
        clients = [AsyncImap(f"c{i}") for i in range(200)]

        async def open_one(c: AsyncImap) -> None:
            await c.connect(imap_port)
            await c.command("LOGIN shared secret-shared")
            await c.command("SELECT INBOX")

        for start in range(0, len(clients), 50):
            await asyncio.gather(*(open_one(c) for c in clients[start : start + 50]))

        # The kernel spread the connections over the four workers.
        pids = _login_pids(server)
        assert len(pids) == 200
        per_worker = {pid: sum(1 for p in pids.values() if p == pid) for pid in set(pids.values())}
        assert len(per_worker) == 4, per_worker

        # Two writers on two different workers change the mailbox at the same time, and
        # LMTP deliveries come in meanwhile.
        by_pid: dict[int, AsyncImap] = {}
        for c in clients:
            by_pid.setdefault(pids[c.name], c)
        writer_a, writer_b = list(by_pid.values())[:2]
        assert pids[writer_a.name] != pids[writer_b.name]

        async def appends(c: AsyncImap, label: str) -> None:
            for i in range(5):
                msg = f"Subject: {label} {i}\r\n\r\nfrom {label}\r\n".encode()
                await c.command("APPEND INBOX (\\Seen)", msg)

        def lmtp_deliveries() -> None:
            for i in range(5):
                deliver(server.port("lmtp"), ["shared"], f"Subject: lmtp {i}\r\n\r\nx\r\n".encode())

        await asyncio.gather(
            appends(writer_a, "a"), appends(writer_b, "b"), asyncio.to_thread(lmtp_deliveries)
        )
        expected_total = 15
        await asyncio.gather(sync_until(writer_a, expected_total), sync_until(writer_b, 15))
        # Then flag changes from both writers at once on different messages.
        await asyncio.gather(
            writer_a.command("STORE 1:5 +FLAGS (\\Flagged)"),
            writer_b.command("STORE 6:10 +FLAGS (\\Answered)"),
        )

        async def check(c: AsyncImap) -> dict[int, str]:
            await sync_until(c, expected_total)
            lines = await c.command("FETCH 1:* (FLAGS)")
            flags = {}
            for line in lines:
                m = re.match(rb"\* (\d+) FETCH \(.*FLAGS \(([^)]*)\)", line)
                if m:
                    flags[int(m.group(1))] = m.group(2).decode()
            return flags

        results = await asyncio.gather(*(check(c) for c in clients))
        for c, flags in zip(clients, results, strict=True):
            assert c.exists == expected_total, c.name
            assert len(flags) == expected_total, (c.name, flags)
            for seq in range(1, 6):
                assert "\\Flagged" in flags[seq], (c.name, seq, flags)
            for seq in range(6, 11):
                assert "\\Answered" in flags[seq], (c.name, seq, flags)
        for start in range(0, len(clients), 50):
            await asyncio.gather(*(c.close() for c in clients[start : start + 50]))
        code = await asyncio.to_thread(server.stop)
        assert code == 0, "\n".join(server.lines[-20:])
    finally:
        server.kill()


@pytest.mark.slow
def test_a_crashed_worker_is_replaced(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    with serving(config, "--workers", "2") as server:
        worker_pids = {
            int(m.group(1))
            for line in server.log_matching("lmtp: listening")
            if (m := re.search(r"aiodbox\.lmtp\[(\d+)\]", line))
        }
        assert len(worker_pids) == 2
        victim = sorted(worker_pids)[0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while len(server.log_matching("lmtp: listening")) < 3:
            assert time.monotonic() < deadline, "\n".join(server.lines[-20:])
            time.sleep(0.1)
        for _ in range(10):  # every connection still finds a live worker
            assert deliver(server.port("lmtp"), ["bob"], b"Subject: r\r\n\r\nr\r\n") == [250]
        assert server.stop() == 0
    assert server.log_matching(f"worker {victim} exited unexpectedly")


# ------------------------------------------------------------------ the demo


def test_demo_in_an_empty_folder(tmp_path: Path) -> None:
    out = tmp_path / "stdout.txt"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIODBOX")}
    with out.open("w") as stdout:
        proc = subprocess.Popen(
            [*AIODBOX, "serve", "--demo", "--workers", "1"],
            cwd=tmp_path,
            env=env,
            stdout=stdout,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while "Deliver a message" not in out.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, out.read_text()
            time.sleep(0.1)
        text = out.read_text()
        fields = dict(re.findall(r"^  (\w+)\s+(\S+)", text, re.MULTILINE))
        assert fields["user"] == "demo"
        for kind in ("IMAP", "IMAPS", "LMTP"):
            assert fields[kind].startswith("127.0.0.1:"), fields
        imaps_port = int(fields["IMAPS"].rsplit(":", 1)[1])
        assert f"openssl s_client -quiet -crlf -connect 127.0.0.1:{imaps_port}" in text

        # IMAPS with the self-signed certificate made for localhost / 127.0.0.1.
        ctx = ssl.create_default_context(cafile=str(tmp_path / "aiodbox-data/tls/cert.pem"))
        imap = imaplib.IMAP4_SSL("127.0.0.1", imaps_port, ssl_context=ctx, timeout=30)
        try:
            imap.login("demo", fields["password"])
            typ, data = imap.select("INBOX")
            assert typ == "OK" and data == [b"6"]
            _, flags = imap.fetch("1:*", "(FLAGS)")
            assert b"\\Flagged" in flags[2] and b"\\Seen" in flags[4]
            imap.logout()
        finally:
            with contextlib.suppress(OSError):
                imap.shutdown()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    config = (tmp_path / "aiodbox-data" / "aiodbox.toml").read_text()
    assert "0.0.0.0" not in config and "127.0.0.1" in config
    assert oct((tmp_path / "aiodbox-data" / "tls" / "key.pem").stat().st_mode & 0o777) == "0o600"
    # --demo makes its own config: --config with it is a usage error.
    both = run_cli("--config", "x.toml", "serve", "--demo", cwd=tmp_path)
    assert both.returncode == 2 and "--config" in both.stderr
