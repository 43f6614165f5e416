"""The README's first command, run the way a newcomer runs it.

In a fresh virtualenv (no test dependencies, no uvloop: just ``pip install`` of a copy
of this working tree) and an empty folder::

    pip install .
    aiodbox serve --demo

then: wait for the banner, log in with ``imaplib`` using the printed password, fetch a
sample message, deliver one over LMTP and see it, SIGTERM, exit status 0.  A second
start reuses the data and does not print the password again.
"""

from __future__ import annotations

import contextlib
import imaplib
import os
import re
import shutil
import signal
import smtplib
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "venv", "build", "dist", "*.egg-info", "__pycache__", ".mypy_cache",
    ".pytest_cache", ".ruff_cache", ".hypothesis", "aiodbox-data",
)  # fmt: skip


class Demo:
    """``aiodbox serve --demo`` with its stdout and stderr read by threads."""

    def __init__(self, exe: Path, cwd: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIODBOX")}
        self.proc = subprocess.Popen(
            [str(exe), "serve", "--demo"],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # kill() takes the workers too
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self.ready = threading.Event()
        self._threads = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _pump(self, stream: object, into: list[str]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            into.append(line.rstrip("\n"))
            if line.startswith("aiodbox: ready:"):
                self.ready.set()

    def wait_banner(self, timeout: float = 120) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while not self.ready.wait(0.2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise AssertionError("no banner:\n" + "\n".join(self.out[-30:] + self.err[-30:]))
        time.sleep(0.2)  # the banner is printed just before the ready line
        text = "\n".join(self.out)
        found = {}
        for key in ("IMAP", "LMTP", "user", "password"):
            m = re.search(rf"^  {key}\s+(\S+)", text, re.MULTILINE)
            assert m, text
            found[key] = m.group(1)
        return found

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(60)
        self.close()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:  # (workers die with their parent: PR_SET_PDEATHSIG)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.close()

    def close(self) -> None:
        for t in self._threads:
            t.join(5)
        if any(t.is_alive() for t in self._threads):
            return  # a reader still blocks in the pipe: closing it would wait for it
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.mark.slow
def test_readme_first_command_in_a_fresh_virtualenv(tmp_path: Path) -> None:
    source = tmp_path / "aiodbox"
    shutil.copytree(REPO, source, ignore=_IGNORE)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--disable-pip-version-check", "."],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-3000:]
    exe = venv / "bin" / "aiodbox"
    work = tmp_path / "newcomer"
    work.mkdir()

    demo = Demo(exe, work)
    try:
        banner = demo.wait_banner()
        assert banner["user"] == "demo"
        host, port = banner["IMAP"].rsplit(":", 1)
        assert host == "127.0.0.1"
        imap = imaplib.IMAP4(host, int(port), timeout=60)
        try:
            imap.login(banner["user"], banner["password"])
            typ, data = imap.select("INBOX")
            assert typ == "OK" and int(data[0]) >= 5
            _, fetched = imap.fetch("1", "(BODY.PEEK[])")
            assert b"Subject: Welcome to aiodbox" in fetched[0][1]
            lhost, lport = banner["LMTP"].rsplit(":", 1)
            with smtplib.LMTP(lhost, int(lport), timeout=60) as lmtp:
                lmtp.sendmail("me@example.org", ["demo"], b"Subject: hi\r\n\r\nhello\r\n")
            for _ in range(50):  # the next command reports it (another worker may hold it)
                imap.noop()
                if int(imap.untagged_responses["EXISTS"][-1]) == int(data[0]) + 1:
                    break
                time.sleep(0.1)
            assert int(imap.untagged_responses["EXISTS"][-1]) == int(data[0]) + 1
            imap.logout()
        finally:
            with contextlib.suppress(OSError):  # closed already after LOGOUT
                imap.shutdown()
        code = demo.stop()
    finally:
        demo.kill()
    assert code == 0, "\n".join(demo.err[-30:])
    assert (work / "aiodbox-data" / "aiodbox.toml").exists()
    stored = (work / "aiodbox-data" / "users").read_text()
    assert stored.startswith("demo:{ARGON2ID}$argon2id$") and banner["password"] not in stored

    # Again: the data is reused and the password is not shown again.
    again = Demo(exe, work)
    try:
        second = again.wait_banner()
        assert second["IMAP"] == banner["IMAP"]
        assert banner["password"] not in "\n".join(again.out)
        assert again.stop() == 0
    finally:
        again.kill()
