"""Start and stop IMAP servers for benchmarks and interop tests: Debian's Dovecot 2.3 with
a generated config, and aiodbox as a subprocess; measure their memory.

Theory of operation
-------------------
``DovecotServer`` writes a self-contained config into its own directory (``base_dir``,
``state_dir``, logs, users file and the users' homes all live under it), listens on
127.0.0.1 only with a free port and no TLS, and runs ``dovecot -F`` (foreground) under
``subprocess.Popen``, so the master's PID is the Popen's PID: stopping is SIGTERM to that
PID (the master stops its services), then SIGKILL of any process of its tree that is still
there.  ``ServerVariant`` picks Dovecot's default process-per-connection imap service
(``client_limit = 1``) or everything in one imap process (``client_limit = N,
process_limit = 1, service_count = 0``).  ``restart_as(variant)`` rewrites the config and
starts again over the same homes, so a populated mailbox can be measured under both.

Durability: ``mail_fsync = always`` (Dovecot fsyncs mail and index files after every
write), the same as aiodbox's ``[storage] fsync = "always"``, which ``AiodboxServer``
writes into its config.  Both keep the mdbox rotation at 10 MiB.

Dovecot's mail processes run as the ``vmail`` user, created (a system user without a home
or a shell) when it is missing and the process is root.  ``ensure_dovecot()`` installs
``dovecot-imapd`` and ``dovecot-lmtpd`` with apt-get when Dovecot is missing, the process
is root and apt-get exists; a ``policy-rc.d`` that returns 101 keeps the package from
starting its own daemon (it is created only if absent, and removed after).

Memory: ``pss_kib()`` sums ``Pss`` from ``/proc/<pid>/smaps_rollup`` over a server's root
process and all its descendants (PSS divides each shared page among the processes that
map it, so a sum over a process tree counts every page once); ``memory_kib()`` also sums
``Pss_Anon``, ``Pss_File`` and ``Rss``.

The functions here block (they fork, sleep and poll); asyncio callers run them with
``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from enum import Enum
from pathlib import Path

DOVECOT_BIN = "/usr/sbin/dovecot"
DOVEADM_BIN = "/usr/bin/doveadm"
DOVECOT_PACKAGES = ("dovecot-imapd", "dovecot-lmtpd")
POLICY_RC_D = Path("/usr/sbin/policy-rc.d")
MAIL_USER = "vmail"
LOCALHOST = "127.0.0.1"
#: Connections any one server instance must accept (the bench uses up to 1000 idle ones
#: plus a few working ones).
MAX_CONNECTIONS = 2100


class HarnessError(RuntimeError):
    """A server could not be installed, configured, started or stopped."""


# ---------------------------------------------------------------------------------------
# Installation and users


def dovecot_installed() -> bool:
    """True when Debian's Dovecot binaries (master and doveadm) are present."""
    return os.access(DOVECOT_BIN, os.X_OK) and os.access(DOVEADM_BIN, os.X_OK)


def dovecot_version() -> str:
    """``dovecot --version`` (e.g. ``2.3.19.1 (9b53102964)``)."""
    out = subprocess.run(
        [DOVECOT_BIN, "--version"], capture_output=True, text=True, check=True, timeout=30
    )
    return out.stdout.strip()


def ensure_dovecot() -> None:
    """Install Dovecot with apt-get if it is missing (root on Debian only).

    apt-get's output goes to stderr (stdout is for the bench's JSON lines).

    Raises:
        HarnessError: Dovecot is missing and cannot be installed here, or apt-get failed.
    """
    if dovecot_installed():
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise HarnessError(
            "Dovecot is not installed and this is not root on Debian: install "
            f"{' '.join(DOVECOT_PACKAGES)} (apt-get install -y ...) and run again"
        )
    created_policy = False
    if not POLICY_RC_D.exists():
        POLICY_RC_D.write_text(
            "#!/bin/sh\n# aiodbox bench: keep packages from starting\nexit 101\n"
        )
        POLICY_RC_D.chmod(0o755)
        created_policy = True
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        for cmd in (
            ["apt-get", "update"],
            ["apt-get", "install", "-y", "--no-install-recommends", *DOVECOT_PACKAGES],
        ):
            print(f"# running: {' '.join(cmd)}", file=sys.stderr, flush=True)
            res = subprocess.run(cmd, env=env, stdout=sys.stderr, stderr=sys.stderr, check=False)
            if res.returncode != 0:
                raise HarnessError(f"{' '.join(cmd)} failed with exit code {res.returncode}")
    finally:
        if created_policy:
            POLICY_RC_D.unlink(missing_ok=True)
    if not dovecot_installed():
        raise HarnessError("apt-get installed the packages but Dovecot is still missing")


def ensure_mail_user(name: str = MAIL_USER) -> tuple[int, int]:
    """The uid and gid Dovecot's mail processes run as; create the system user if needed.

    Raises:
        HarnessError: the user is missing and cannot be created (not root).
    """
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        if os.geteuid() != 0:
            raise HarnessError(f"user {name!r} is missing and only root can create it") from None
        cmd = [
            "useradd",
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            name,
        ]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=60)
        if res.returncode != 0:
            raise HarnessError(f"useradd {name} failed: {res.stderr.strip()}") from None
        pw = pwd.getpwnam(name)
    return pw.pw_uid, pw.pw_gid


# ---------------------------------------------------------------------------------------
# Processes, ports, memory


def free_port(host: str = LOCALHOST) -> int:
    """A TCP port on ``host`` that was free a moment ago (bind to port 0, then close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        fields = stat[stat.rfind(b")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def process_tree(root: int) -> list[int]:
    """``root`` and all its living descendants (from ``/proc/*/stat``), root first."""
    children = _children_map()
    out: list[int] = []
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in out:
            continue
        if pid == root and not os.path.exists(f"/proc/{pid}"):
            continue
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def memory_kib(pids: Sequence[int]) -> dict[str, int]:
    """``smaps_rollup`` fields summed over ``pids`` (KiB): ``Pss``, ``Pss_Anon``,
    ``Pss_File``, ``Pss_Shmem``, ``Rss``; processes that vanished meanwhile count 0.

    ``Pss_Anon`` is the part that other processes on the machine cannot change: file pages
    (shared libraries) are divided among *every* process that maps them, so ``Pss`` moves
    a little when unrelated processes start or stop.
    """
    wanted = {b"Pss:", b"Pss_Anon:", b"Pss_File:", b"Pss_Shmem:", b"Rss:"}
    total = {k.decode()[:-1]: 0 for k in wanted}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
                for line in f:
                    key, _, rest = line.partition(b" ")
                    if key in wanted:
                        total[key.decode()[:-1]] += int(rest.split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def pss_kib(pids: Sequence[int]) -> int:
    """Sum of ``Pss`` (KiB) over ``pids``; processes that vanished meanwhile count 0."""
    return memory_kib(pids)["Pss"]


def wait_for_imap(
    host: str, port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Wait until ``host:port`` accepts a connection and sends an IMAP ``* OK`` greeting.

    Raises:
        HarnessError: ``proc`` exited first, or nothing answered within ``timeout``.
    """
    deadline = time.monotonic() + timeout
    last: str = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise HarnessError(f"the server exited with code {proc.returncode} while starting")
        try:
            with socket.create_connection((host, port), timeout=2.0) as s:
                greeting = s.recv(512)
                if greeting.startswith((b"* OK", b"* PREAUTH")):
                    with contextlib.suppress(OSError):
                        s.sendall(b"z LOGOUT\r\n")
                    return
                last = f"unexpected greeting {greeting[:80]!r}"
        except OSError as e:
            last = str(e)
        time.sleep(0.05)
    raise HarnessError(f"no IMAP greeting on {host}:{port} after {timeout:.0f} s ({last})")


def _stop_tree(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM the root and wait; then SIGTERM, and after a grace period SIGKILL, whatever
    is left of the tree it had (each by its PID, checked against its start time so that a
    reused PID is never hit)."""
    if proc.poll() is not None:
        return
    tree = [(pid, _start_time(pid)) for pid in process_tree(proc.pid)[1:]]
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(10)
    left = [(pid, st) for pid, st in tree if st is not None and _start_time(pid) == st]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid, _st in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 2.0
        while left and time.monotonic() < deadline:
            time.sleep(0.02)
            left = [(pid, st) for pid, st in left if _start_time(pid) == st]
        if not left:
            return


def _start_time(pid: int) -> int | None:
    """The process's start time (clock ticks since boot), None if gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()
    if fields[0] == b"Z":
        return None
    return int(fields[19])


def _tail(path: Path, limit: int = 2000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-limit:].decode("utf-8", "replace").strip()


def write_passwd_file(path: Path, users: dict[str, str]) -> None:
    """Dovecot passwd-file lines ``user:{PLAIN}password::::::`` (no ':' or newline)."""
    lines = []
    for user, password in users.items():
        if any(c in user + password for c in ":\n\r"):
            raise ValueError(f"user {user!r} or its password holds ':' or a newline")
        lines.append(f"{user}:{{PLAIN}}{password}::::::\n")
    path.write_text("".join(lines))
    path.chmod(0o644)


# ---------------------------------------------------------------------------------------
# Servers


class ServerVariant(Enum):
    """How Dovecot's imap service maps connections to processes."""

    PROCESS_PER_CONNECTION = "process_per_connection"  # client_limit = 1 (the default)
    ONE_PROCESS = "one_process"  # client_limit = N, process_limit = 1


class ManagedServer:
    """A server subprocess tree: start, stop, restart, memory.  Subclasses write their
    config in ``prepare`` and give the command line in ``_argv``."""

    name = "server"

    def __init__(self, workdir: Path, fmt: str) -> None:
        if fmt not in ("sdbox", "mdbox"):
            raise ValueError(f"format must be sdbox or mdbox, not {fmt!r}")
        self.workdir = workdir
        self.format = fmt
        self.host = LOCALHOST
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.users: dict[str, str] = {}
        self.start_timeout = 30.0

    @property
    def pid(self) -> int:
        """The root process's PID."""
        if self.proc is None:
            raise HarnessError(f"{self.name} is not running")
        return self.proc.pid

    def pids(self) -> list[int]:
        """The root process and its living descendants."""
        return process_tree(self.pid)

    def pss_kib(self) -> int:
        """PSS in KiB summed over the whole process tree."""
        return pss_kib(self.pids())

    def memory_kib(self) -> dict[str, int]:
        """``memory_kib()`` over the whole process tree (with ``processes``: its size)."""
        pids = self.pids()
        return memory_kib(pids) | {"processes": len(pids)}

    def running(self) -> bool:
        """True while the root process has not exited."""
        return self.proc is not None and self.proc.poll() is None

    def set_users(self, users: dict[str, str]) -> None:
        """Users and passwords the server authenticates (written before ``start``)."""
        self.users = dict(users)

    def data_dirs(self) -> list[Path]:
        """Directories holding mail and index files (for page-cache eviction)."""
        return []

    def _argv(self) -> list[str]:
        raise NotImplementedError

    def prepare(self) -> None:
        """Create the directories and write the config and users files (``start`` calls
        it; the port must be set)."""
        raise NotImplementedError

    def _stderr_path(self) -> Path:
        return self.workdir / "stderr.log"

    def _log_tail(self) -> str:
        return _tail(self._stderr_path())

    def _env(self) -> dict[str, str] | None:
        return None

    def start(self) -> None:
        """Write the config, start the server, return when it greets on its port.

        Raises:
            HarnessError: it exited or did not greet within ``start_timeout`` (the message
                holds the end of its log).
        """
        if self.running():
            raise HarnessError(f"{self.name} is already running")
        if not self.port:
            self.port = free_port(self.host)
        self.prepare()
        with open(self._stderr_path(), "ab") as err:
            self.proc = subprocess.Popen(
                self._argv(),
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                cwd=self.workdir,
                env=self._env(),
                start_new_session=True,
            )
        try:
            wait_for_imap(self.host, self.port, self.start_timeout, self.proc)
        except HarnessError as e:
            self.stop()
            raise HarnessError(f"{self.name}: {e}; log: {self._log_tail()}") from None

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the server (SIGTERM to its root PID, SIGKILL to leftovers of its tree)."""
        if self.proc is not None:
            _stop_tree(self.proc, timeout)
            self.proc = None

    def restart(self) -> None:
        """Stop and start again over the same data, on the same port."""
        self.stop()
        self.start()

    def __enter__(self) -> ManagedServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class DovecotServer(ManagedServer):
    """Debian's Dovecot with its own config in ``workdir`` (see the module docstring)."""

    name = "dovecot"

    def __init__(
        self,
        workdir: Path,
        fmt: str,
        variant: ServerVariant = ServerVariant.PROCESS_PER_CONNECTION,
        fsync: str = "always",
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        super().__init__(workdir, fmt)
        self.variant = variant
        self.fsync = fsync
        self.max_connections = max_connections
        self.conf_path = workdir / "dovecot.conf"

    def config_text(self) -> str:
        """The generated dovecot.conf."""
        base = self.workdir
        n = self.max_connections
        if self.variant is ServerVariant.ONE_PROCESS:
            imap_service = f"  client_limit = {n}\n  process_limit = 1\n  service_count = 0\n"
        else:
            imap_service = f"  client_limit = 1\n  process_limit = {n}\n"
        uid = pwd.getpwnam(MAIL_USER).pw_uid
        return f"""\
# Generated by aiodbox bench/dovecot_harness.py: 127.0.0.1 only, no TLS.
base_dir = {base}/run
state_dir = {base}/state
instance_name = aiodbox-bench-{self.port}
log_path = {base}/log/dovecot.log
info_log_path = {base}/log/dovecot.log
protocols = imap
listen = {LOCALHOST}
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_uid = {MAIL_USER}
mail_gid = {MAIL_USER}
first_valid_uid = {uid}
mail_location = {self.format}:~/{self.format}
mail_fsync = {self.fsync}
mdbox_rotate_size = 10M
mail_max_userip_connections = {n}
default_process_limit = {n}
default_client_limit = {4 * n + 1000}
default_vsz_limit = 1G

namespace inbox {{
  inbox = yes
  separator = /
  prefix =
}}

passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {base}/users
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {base}/users
  default_fields = uid={MAIL_USER} gid={MAIL_USER} home={base}/home/%u
}}

service imap-login {{
  inet_listener imap {{
    address = {LOCALHOST}
    port = {self.port}
  }}
  inet_listener imaps {{
    port = 0
  }}
  process_limit = {n}
}}
service imap {{
{imap_service}}}
"""

    def prepare(self) -> None:
        if not dovecot_installed():
            raise HarnessError("Dovecot is not installed (ensure_dovecot() installs it)")
        uid, gid = ensure_mail_user()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o755)  # the mail processes (vmail) walk through it
        for sub in ("run", "state", "log"):
            (self.workdir / sub).mkdir(exist_ok=True)
        home = self.workdir / "home"
        home.mkdir(exist_ok=True)
        os.chown(home, uid, gid)
        write_passwd_file(self.workdir / "users", self.users)
        self.conf_path.write_text(self.config_text())

    def _argv(self) -> list[str]:
        return [DOVECOT_BIN, "-F", "-c", str(self.conf_path)]

    def _log_tail(self) -> str:
        return " | ".join(
            t
            for t in (_tail(self._stderr_path()), _tail(self.workdir / "log" / "dovecot.log"))
            if t
        )

    def restart_as(self, variant: ServerVariant) -> None:
        """Restart with another imap service variant over the same homes."""
        self.stop()
        self.variant = variant
        self.start()

    def user_home(self, user: str) -> Path:
        """The user's home (mail lives under ``<home>/<format>``)."""
        return self.workdir / "home" / user

    def data_dirs(self) -> list[Path]:
        """Directories holding mail and index files (for page-cache eviction)."""
        return [self.workdir / "home"]


class AiodboxServer(ManagedServer):
    """``python -m aiodbox.cli.main --config <file> serve --workers 1`` with its own config.

    ``fsync = "always"`` matches Dovecot's ``mail_fsync = always``; connection limits are
    raised so that 1000 connections of one user from 127.0.0.1 are accepted.
    """

    name = "aiodbox"

    def __init__(
        self,
        workdir: Path,
        fmt: str,
        fs: str = "posix",
        fsync: str = "always",
        python: str = sys.executable,
        src_dir: Path | None = None,
    ) -> None:
        super().__init__(workdir, fmt)
        self.fs = fs
        self.fsync = fsync
        self.python = python
        self.src_dir = src_dir
        self.conf_path = workdir / "aiodbox.toml"
        self.lmtp_port = 0

    def config_text(self) -> str:
        """The generated aiodbox.toml."""
        n = MAX_CONNECTIONS
        return f"""\
# Generated by aiodbox bench/dovecot_harness.py: 127.0.0.1 only.
[storage]
format = "{self.format}"
mail_root = "mail"
index_root = "index"
fs = "{self.fs}"
fsync = "{self.fsync}"
mdbox_rotate_size = "10M"

[imap]
listen = ["{LOCALHOST}:{self.port}"]
max_connections_per_user = {n}
max_connections_per_ip = {n}

[lmtp]
listen = ["{LOCALHOST}:{self.lmtp_port}"]

[auth]
passwd_file = "users"
allow_plaintext = true

[log]
file = "aiodbox.log"
level = "warning"
"""

    def prepare(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.lmtp_port:
            self.lmtp_port = free_port(self.host)
        write_passwd_file(self.workdir / "users", self.users)
        self.conf_path.write_text(self.config_text())

    def _argv(self) -> list[str]:
        return [
            self.python,
            "-m",
            "aiodbox.cli.main",
            "--config",
            str(self.conf_path),
            "serve",
            "--workers",
            "1",
        ]

    def _env(self) -> dict[str, str] | None:
        if self.src_dir is None:
            return None
        path = os.environ.get("PYTHONPATH")
        return dict(
            os.environ,
            PYTHONPATH=str(self.src_dir) + (os.pathsep + path if path else ""),
        )

    def _log_tail(self) -> str:
        return " | ".join(
            t for t in (_tail(self._stderr_path()), _tail(self.workdir / "aiodbox.log")) if t
        )

    def data_dirs(self) -> list[Path]:
        """Directories holding mail and index files (for page-cache eviction)."""
        return [self.workdir / "mail", self.workdir / "index"]


def evict_page_cache(dirs: Iterable[Path]) -> int:
    """Drop the clean cached pages of every file under ``dirs``; returns the file count.

    Uses ``posix_fadvise(POSIX_FADV_DONTNEED)`` (files written with fsync are clean, so the
    kernel drops them); other processes' open mappings keep their pages.
    """
    count = 0
    for d in dirs:
        for root, _dirs, files in os.walk(d):
            for name in files:
                try:
                    fd = os.open(os.path.join(root, name), os.O_RDONLY | os.O_NOFOLLOW)
                except OSError:
                    continue
                try:
                    os.fdatasync(fd)
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    count += 1
                finally:
                    os.close(fd)
    return count


def make_workdir(parent: str | None = None, prefix: str = "imap-bench-") -> Path:
    """A fresh directory (0755, so Dovecot's mail processes can walk through it)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    path.chmod(0o755)
    return path


def raise_nofile_limit(wanted: int) -> int:
    """Raise RLIMIT_NOFILE's soft limit towards ``wanted`` (up to the hard limit, or beyond
    it when root); returns the soft limit in force."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    if hard != resource.RLIM_INFINITY and hard < wanted and os.geteuid() == 0:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
    new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return new
