"""``aiodbox serve [--demo] [--workers N]``: IMAP and LMTP, in one or several processes.

Theory of operation
-------------------
Before any event loop runs, the command checks everything it can refuse cleanly: the
config (exit 3), the TLS files and the metrics address (exit 3), the storage backend
(exit 5: the FS spec builds, ``mail_root`` and ``index_root`` can be written, mdbox has
a backend with locks), and the listen addresses (exit 1 when one is in use).

**Sockets: SO_REUSEPORT, one listening socket per worker.**  For every address the
parent first binds a probe socket *without* SO_REUSEPORT, so an address that anything
else listens on fails here with "address in use" (with SO_REUSEPORT alone a second
``aiodbox serve`` would silently share the port); that also turns port 0 into a real
port.  It then keeps a *reservation* socket bound with SO_REUSEPORT on that port but not
listening (a socket that does not listen gets no connections), which holds the port
across worker restarts.  Each worker binds and listens on its own SO_REUSEPORT socket,
and the kernel spreads new connections over the workers' sockets by a hash of the
client address: no thundering herd and no single busy process taking every accept, as
happens when all workers accept on one inherited socket.  The cost: connections queued
in a worker's backlog when it exits are reset (clients retry), which only happens on
stop or crash.

**Processes.**  ``--workers 1`` serves in this process.  With more, the parent forks the
workers (before it has any thread or event loop, so nothing is inherited half-way) and
only supervises: it waits for signals with ``sigtimedwait`` (SIGTERM, SIGINT, SIGHUP,
SIGCHLD blocked, so none is lost between checks), forwards SIGTERM/SIGHUP to the
workers, reaps them, restarts one that died unexpectedly (giving up after
``RESTART_LIMIT`` restarts within a minute), and reports readiness once every worker
wrote its pid to a pipe after it started listening.  Workers ask the kernel for SIGTERM
when the parent dies (``PR_SET_PDEATHSIG``), so even a SIGKILLed parent leaves no
workers behind.

**A worker** runs one event loop (uvloop when installed): the storage, the passwd-file
authenticator (shared by IMAP and LMTP), an :class:`~aiodbox.imap.server.ImapServer` and
an :class:`~aiodbox.lmtp.LmtpServer` on its sockets.  SIGTERM/SIGINT: both servers stop
accepting, finish the commands in flight, say BYE / 421, close; then the storage closes
and the worker exits 0.  SIGHUP: the passwd-file is read again (a bad file leaves the
old table in service).

**Logging**: one line per command (user, ip, command, result, ms, bytes in and out) from
both servers, to stderr or ``[log] file``.  Workers hand records to a thread
(``QueueHandler``) so a slow disk never holds the event loop.

**Metrics** (``[metrics] listen``, off by default, loopback addresses only): one worker
serves them itself; several use prometheus-client's multiprocess mode, the parent
serving the sum.  Each worker's storage then runs on a ``stats:`` FS layer and a task
turns its numbers into metrics every ``FS_METRICS_INTERVAL`` seconds.

Exit status: 0 stopped cleanly; 1 a listen address cannot be used; 2 bad arguments;
3 no or invalid config (file and line), TLS files or metrics address; 5 the storage
backend is unusable; 70 a worker failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import logging.handlers
import os
import queue
import shutil
import signal
import socket
import ssl
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from aiodbox import metrics
from aiodbox.cli.common import (
    EXIT_BACKEND,
    EXIT_CONFIG,
    EXIT_INTERNAL,
    EXIT_OK,
    EXIT_PROBLEMS,
    EXIT_USAGE,
    CliError,
    load_settings,
    report,
    run,
)
from aiodbox.config import Config, ConfigError, LogConfig, load_config, parse_listen

log = logging.getLogger("aiodbox.serve")

SHUTDOWN_TIMEOUT = 10.0
"""Seconds a worker lets commands in flight finish on SIGTERM."""
KILL_AFTER = 30.0
"""Seconds the parent waits for workers after SIGTERM before SIGKILL."""
READY_TIMEOUT = 60.0
"""Seconds the parent waits for every worker to listen."""
RESTART_LIMIT = 5
"""Restarts of crashed workers allowed per minute before the parent gives up."""
FS_METRICS_INTERVAL = 2.0
"""Seconds between two FS metric collections."""
BACKLOG = 1024

_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``serve`` command."""
    parser = subparsers.add_parser(
        "serve",
        help="run the IMAP and LMTP servers",
        description="Serve IMAP and LMTP. SIGTERM stops cleanly, SIGHUP reloads the "
        "passwd-file. Exit status: 0 stopped cleanly; 1 a listen address is in use; "
        "2 bad arguments; 3 config problem; 5 storage backend unusable; 70 a worker "
        "failed.",
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        help="create (or reuse) ./aiodbox-data with a demo user, sample mail and a "
        "self-signed certificate, listen on 127.0.0.1 and print how to connect",
    )
    parser.add_argument(
        "--workers",
        type=_worker_count,
        metavar="N",
        help="worker processes sharing the listening sockets (default: the number of CPUs)",
    )
    parser.set_defaults(func=report(run_serve))


def _worker_count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 1 <= n <= 1024:
        raise argparse.ArgumentTypeError("must be between 1 and 1024")
    return n


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# ---------------------------------------------------------------------- checks


def _check_backend(config: Config) -> None:
    """Refuse (exit 5) a storage that cannot work; builds no threads and no loop."""
    from aiodbox.storage import Storage

    sc = config.storage
    try:
        Storage(sc)  # builds the FS stack (spec, backend options) and checks capabilities
    except Exception as e:
        raise CliError(f"storage backend {sc.fs!r}: {e}", EXIT_BACKEND) from None
    layers = [part.strip() for part in sc.fs.split(":")]
    if layers[-1] in ("posix", "uring", "auto"):
        _check_writable(Path(sc.mail_root), "[storage] mail_root")
    _check_writable(Path(sc.index_root), "[storage] index_root")


def _check_writable(path: Path, what: str) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".aiodbox-probe-"):
            pass
    except OSError as e:
        raise CliError(f"{what} {path} is not usable: {e.strerror or e}", EXIT_BACKEND) from None


def _check_tls(config: Config) -> ssl.SSLContext | None:
    from aiodbox.imap.tls import TlsConfigError, server_context

    try:
        ctx = server_context(config.tls)
    except TlsConfigError as e:
        raise CliError(str(e), EXIT_CONFIG) from None
    if config.imap.tls_listen and ctx is None:
        raise CliError("[imap] tls_listen needs [tls] cert and key", EXIT_CONFIG)
    return ctx


def _metrics_address(config: Config) -> tuple[str, int] | None:
    if not config.metrics.listen:
        return None
    host, port = parse_listen(config.metrics.listen[0])
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        raise CliError(
            f"[metrics] listen {config.metrics.listen[0]!r}: the metrics endpoint listens on "
            "loopback addresses only (127.0.0.1 or ::1); put a proxy in front to expose it",
            EXIT_CONFIG,
        )
    return host, port


# ---------------------------------------------------------------------- sockets


@dataclasses.dataclass
class Listener:
    """One address to serve: the port it resolved to and its reservation socket."""

    kind: str  # "imap", "imaps", "lmtp"
    family: int
    host: str
    port: int
    reservation: socket.socket

    @property
    def spec(self) -> str:
        """``host:port`` as the config writes it."""
        host = f"[{self.host}]" if self.family == socket.AF_INET6 else self.host
        return f"{host}:{self.port}"


def _socket(family: int, *, reuse_port: bool) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    return sock


def _reserve(spec: str, kind: str) -> Listener:
    host, port = parse_listen(spec)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise CliError(f"[{kind}] listen {spec!r}: {e.strerror}", EXIT_CONFIG) from None
    family, _, _, _, addr = infos[0]
    address = str(addr[0])
    probe = _socket(family, reuse_port=False)
    reservation = _socket(family, reuse_port=True)
    try:
        with probe:
            probe.bind((address, port))
            port = int(probe.getsockname()[1])
        reservation.bind((address, port))
    except OSError as e:
        reservation.close()
        why = e.strerror or str(e)
        raise CliError(f"cannot listen on {spec} ({kind}): {why}", EXIT_PROBLEMS) from None
    return Listener(kind, family, address, port, reservation)


def _reserve_all(config: Config) -> list[Listener]:
    out: list[Listener] = []
    try:
        for kind, specs in (
            ("imap", config.imap.listen),
            ("imaps", config.imap.tls_listen),
            ("lmtp", config.lmtp.listen),
        ):
            out += [_reserve(spec, kind) for spec in specs]
    except BaseException:
        for listener in out:
            listener.reservation.close()
        raise
    return out


def _listening_socket(listener: Listener) -> socket.socket:
    """This worker's own SO_REUSEPORT socket on ``listener``'s address."""
    sock = _socket(listener.family, reuse_port=True)
    try:
        sock.bind((listener.host, listener.port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _resolved(config: Config, listeners: list[Listener]) -> Config:
    """``config`` with the listen addresses as bound (numeric, real ports)."""

    def specs(kind: str) -> tuple[str, ...]:
        return tuple(lst.spec for lst in listeners if lst.kind == kind)

    return dataclasses.replace(
        config,
        imap=dataclasses.replace(config.imap, listen=specs("imap"), tls_listen=specs("imaps")),
        lmtp=dataclasses.replace(config.lmtp, listen=specs("lmtp")),
    )


def _describe(listeners: list[Listener]) -> str:
    return ", ".join(f"{lst.kind} {lst.spec}" for lst in listeners)


# ---------------------------------------------------------------------- logging

_FORMAT = "%(asctime)s %(name)s[%(process)d] %(levelname)s: %(message)s"


def _handler(config: LogConfig) -> logging.Handler:
    handler: logging.Handler
    if config.file is not None:
        handler = logging.FileHandler(config.file, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_FORMAT))
    return handler


def _setup_logging(config: LogConfig) -> None:
    """Log synchronously (the parent: no event loop to hold up)."""
    try:
        handler = _handler(config)
    except OSError as e:
        raise CliError(f"[log] file {config.file}: {e.strerror or e}", EXIT_CONFIG) from None
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(config.level.upper())
    # aiosmtpd logs every command line at INFO on its own logger: ours are enough.
    logging.getLogger("mail.log").setLevel(logging.WARNING)


def _setup_worker_logging(config: LogConfig) -> logging.handlers.QueueListener:
    """Log through a queue to a thread: a write never blocks the worker's event loop."""
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = logging.handlers.QueueListener(records, _handler(config))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(logging.handlers.QueueHandler(records))
    listener.start()
    return listener


# ---------------------------------------------------------------------- a worker


async def _collect_fs_metrics(fs_stats: Callable[[], dict[str, object]], backend: str) -> None:
    collector = metrics.FsStatsCollector(backend)
    while True:
        try:
            collector.collect(fs_stats())
        except Exception:
            log.exception("collecting FS metrics failed")
        await asyncio.sleep(FS_METRICS_INTERVAL)


async def serve_worker(
    config: Config,
    listeners: list[Listener],
    *,
    ssl_context: ssl.SSLContext | None,
    ready: Callable[[], None],
    fs_metrics: bool = False,
) -> int:
    """Run IMAP and LMTP on ``listeners`` until SIGTERM/SIGINT; return the exit code.

    Args:
        config: the config with resolved listen addresses (:func:`_resolved`).
        listeners: the addresses; this worker binds its own SO_REUSEPORT sockets.
        ssl_context: for STARTTLS and implicit TLS, or None.
        ready: called once both servers listen.
        fs_metrics: wrap the storage in a ``stats:`` layer and export its numbers.
    """
    from aiodbox.auth import PasswdFileAuthenticator
    from aiodbox.auth.errors import PasswdFileError
    from aiodbox.imap.server import ImapServer
    from aiodbox.lmtp import LmtpServer, StorageDelivery
    from aiodbox.storage import Storage

    loop = asyncio.get_running_loop()
    storage_config = config.storage
    if fs_metrics and "stats" not in [p.strip() for p in storage_config.fs.split(":")]:
        storage_config = dataclasses.replace(storage_config, fs="stats:" + storage_config.fs)
    storage = Storage(storage_config)
    auth = PasswdFileAuthenticator(
        config.auth.passwd_file,
        default_scheme=config.auth.default_scheme,
        failure_delay=config.auth.failure_delay,
    )
    try:
        await auth.reload()
    except PasswdFileError as e:
        log.error("%s: logins and deliveries fail until it loads (SIGHUP re-reads it)", e)
    imap = ImapServer(config, storage, auth, ssl_context=ssl_context)
    lmtp = LmtpServer(
        StorageDelivery(storage, auth),
        listen=config.lmtp.listen,
        max_message_size=config.lmtp.max_message_size,
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def reload() -> None:
        log.info("SIGHUP: reloading the passwd-file %s", config.auth.passwd_file)
        imap.reload_auth()  # the authenticator is shared with LMTP

    loop.add_signal_handler(signal.SIGHUP, reload)
    collector: asyncio.Task[None] | None = None
    try:
        try:
            await imap.start([_listening_socket(lst) for lst in listeners if lst.kind != "lmtp"])
            await lmtp.start([_listening_socket(lst) for lst in listeners if lst.kind == "lmtp"])
        except OSError as e:
            raise CliError(f"cannot listen: {e.strerror or e}", EXIT_PROBLEMS) from None
        if fs_metrics:
            backend = storage.fs.name.removeprefix("stats:")
            collector = loop.create_task(_collect_fs_metrics(storage.fs.stats, backend))
        ready()
        await stop.wait()
        log.info("stopping: finishing commands in flight")
    finally:
        if collector is not None:
            collector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await collector
        await asyncio.gather(imap.shutdown(SHUTDOWN_TIMEOUT), lmtp.shutdown(SHUTDOWN_TIMEOUT))
        await auth.aclose()
        await storage.close()
    return EXIT_OK


def _run_worker(
    config: Config,
    listeners: list[Listener],
    ready: Callable[[], None],
    *,
    fs_metrics: bool,
) -> int:
    """Load what blocks (modules, TLS files), then run :func:`serve_worker` on a fresh
    loop."""
    import aiodbox.imap.server
    import aiodbox.lmtp
    import aiodbox.storage  # noqa: F401  (loaded here, not on the event loop)

    ssl_context = _check_tls(config)
    return run(
        lambda: serve_worker(
            config, listeners, ssl_context=ssl_context, ready=ready, fs_metrics=fs_metrics
        )
    )


# ---------------------------------------------------------------------- supervisor


def _die_with_parent(parent: int) -> None:
    """Ask Linux for SIGTERM when the supervisor dies (even by SIGKILL), so workers are
    never left serving on their own; elsewhere this is a no-op."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


@dataclasses.dataclass
class _Child:
    slot: int
    started: float
    ready: bool = False


class _Supervisor:
    """Forks the workers and watches them; see the module docstring."""

    def __init__(
        self,
        config: Config,
        listeners: list[Listener],
        workers: int,
        on_ready: Callable[[], None],
        metrics_on: bool,
    ) -> None:
        self.config = config
        self.listeners = listeners
        self.workers = workers
        self.on_ready = on_ready
        self.metrics_on = metrics_on
        self.children: dict[int, _Child] = {}
        self.restarts: list[float] = []
        self.stopping = False
        self.failed = False
        self.exit_code = EXIT_OK
        self._ready_r, self._ready_w = os.pipe()
        os.set_blocking(self._ready_r, False)
        self._ready_buf = b""
        self._announced = False

    def spawn(self, slot: int, old_mask: set[int | signal.Signals]) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker
            code = EXIT_INTERNAL
            try:
                _die_with_parent(parent)
                os.close(self._ready_r)
                signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
                for sig in (signal.SIGTERM, signal.SIGHUP):
                    signal.signal(sig, signal.SIG_DFL)
                listener = _setup_worker_logging(self.config.log)
                if self.metrics_on:
                    metrics.enable_worker()
                ready_w = self._ready_w

                def ready() -> None:
                    os.write(ready_w, os.getpid().to_bytes(4, "little"))

                try:
                    code = _run_worker(
                        self.config, self.listeners, ready, fs_metrics=self.metrics_on
                    )
                finally:
                    listener.stop()
            except CliError as e:
                print(f"aiodbox: {e}", file=sys.stderr)
                code = e.code
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        self.children[pid] = _Child(slot, time.monotonic())

    def _read_ready(self) -> None:
        try:
            data = os.read(self._ready_r, 4096)
        except BlockingIOError:
            return
        self._ready_buf += data
        while len(self._ready_buf) >= 4:
            pid = int.from_bytes(self._ready_buf[:4], "little")
            self._ready_buf = self._ready_buf[4:]
            child = self.children.get(pid)
            if child is not None:
                child.ready = True
        if (
            not self._announced
            and len(self.children) == self.workers
            and all(c.ready for c in self.children.values())
        ):
            self._announced = True
            self.on_ready()

    def stop(self, reason: str) -> None:
        if not self.stopping:
            log.info("stopping the workers (%s)", reason)
        self.stopping = True
        self._stop_deadline = time.monotonic() + KILL_AFTER
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def _reap(self, old_mask: set[int | signal.Signals]) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self.children.pop(pid, None)
            if child is None:
                continue
            metrics.process_dead(pid)
            code = os.waitstatus_to_exitcode(status)
            if self.stopping:
                if code != 0:
                    log.error("worker %d exited with status %d", pid, code)
                    self.exit_code = EXIT_INTERNAL
                continue
            if not child.ready:
                log.error("worker %d failed while starting (status %d)", pid, code)
                self.exit_code = code if code > 0 else EXIT_INTERNAL
                self.stop("a worker failed to start")
                continue
            now = time.monotonic()
            self.restarts = [t for t in self.restarts if now - t < 60.0] + [now]
            if len(self.restarts) > RESTART_LIMIT:
                log.error("worker %d exited (status %d); too many restarts, giving up", pid, code)
                self.exit_code = EXIT_INTERNAL
                self.stop("workers keep failing")
                continue
            log.error("worker %d exited unexpectedly (status %d); starting a new one", pid, code)
            self.spawn(child.slot, old_mask)

    def run(self) -> int:
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        started = time.monotonic()
        try:
            for slot in range(self.workers):
                self.spawn(slot, old_mask)
            while self.children:
                info = signal.sigtimedwait(_SIGNALS, 0.2)
                self._read_ready()
                if info is not None:
                    signo = info.si_signo
                    if signo in (signal.SIGTERM, signal.SIGINT):
                        self.stop(signal.Signals(signo).name)
                    elif signo == signal.SIGHUP:
                        log.info("SIGHUP: workers reload the passwd-file")
                        for pid in self.children:
                            with contextlib.suppress(ProcessLookupError):
                                os.kill(pid, signal.SIGHUP)
                    elif signo == signal.SIGCHLD:
                        self._reap(old_mask)
                self._reap(old_mask)
                now = time.monotonic()
                if not self._announced and not self.stopping and now - started > READY_TIMEOUT:
                    log.error("the workers did not start listening within %.0f s", READY_TIMEOUT)
                    self.exit_code = EXIT_INTERNAL
                    self.stop("start timeout")
                if self.stopping and now > self._stop_deadline:
                    for pid in list(self.children):
                        log.error("worker %d did not stop; killing it", pid)
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                    self._stop_deadline = now + 5.0
        except BaseException:
            # Never leave workers behind: stop them, wait a little, kill the rest.
            log.exception("the supervisor failed; stopping the workers")
            self.exit_code = EXIT_INTERNAL
            self._stop_and_wait()
            raise
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            os.close(self._ready_r)
            os.close(self._ready_w)
        return self.exit_code

    def _stop_and_wait(self) -> None:
        for sig, grace in ((signal.SIGTERM, KILL_AFTER), (signal.SIGKILL, 5.0)):
            for pid in self.children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + grace
            while self.children and time.monotonic() < deadline:
                for pid in list(self.children):
                    with contextlib.suppress(ChildProcessError):
                        done, _ = os.waitpid(pid, os.WNOHANG)
                        if done:
                            del self.children[pid]
                time.sleep(0.05)
            if not self.children:
                return


# ---------------------------------------------------------------------- the command


def _wait_single_threaded(timeout: float = 1.0) -> None:
    """Make sure no thread runs when the workers are forked (a safety net: nothing
    before this point should have started one)."""
    deadline = time.monotonic() + timeout
    for thread in threading.enumerate():
        if thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))
    left = [t.name for t in threading.enumerate() if t is not threading.current_thread()]
    if left:
        log.warning("threads still running before starting the workers: %s", ", ".join(left))


def _prepare_demo(args: argparse.Namespace) -> tuple[Config, Callable[[Config], str]]:
    from aiodbox import demo

    if getattr(args, "config", None):
        raise CliError(
            f"--demo uses ./{demo.DATA_DIR}/aiodbox.toml; leave out --config", EXIT_USAGE
        )
    root = Path.cwd() / demo.DATA_DIR
    try:
        setup = demo.prepare(root)
    except OSError as e:
        raise CliError(f"cannot set up {root}: {e}", EXIT_BACKEND) from None
    if setup.created:
        print(f"aiodbox: created {root} (user {setup.user!r}, sample mail, certificate)")
    try:
        config = load_config(setup.config_path)
    except ConfigError as e:
        raise CliError(str(e), EXIT_CONFIG) from None
    return config, lambda resolved: demo.banner(setup, resolved)


def run_serve(args: argparse.Namespace) -> int:
    """The ``serve`` command (see the module docstring)."""
    banner: Callable[[Config], str] | None = None
    if args.demo:
        config, banner = _prepare_demo(args)
    else:
        config = load_settings(args)
    _setup_logging(config.log)
    workers = args.workers or _cpus()
    metrics_at = _metrics_address(config)
    _check_tls(config)
    _check_backend(config)
    listeners = _reserve_all(config)
    resolved = _resolved(config, listeners)
    fs_metrics = metrics_at is not None
    shown = banner

    def on_ready() -> None:
        if shown is not None:
            print(shown(resolved), flush=True)
        print(
            f"aiodbox: ready: {_describe(listeners)} ({workers} worker"
            f"{'s' if workers > 1 else ''}, pid {os.getpid()})",
            file=sys.stderr,
            flush=True,
        )

    metrics_dir: str | None = None
    try:
        if workers == 1:
            if metrics_at is not None:
                port = metrics.enable(*metrics_at)
                log.info("metrics on http://%s:%d/metrics", metrics_at[0], port)
            listener = _setup_worker_logging(config.log)
            try:
                return _run_worker(resolved, listeners, on_ready, fs_metrics=fs_metrics)
            finally:
                listener.stop()
        _wait_single_threaded()
        if metrics_at is not None:
            metrics_dir = tempfile.mkdtemp(prefix="aiodbox-metrics-")
            metrics.multiprocess_dir(metrics_dir)
        supervisor = _Supervisor(resolved, listeners, workers, on_ready, fs_metrics)
        if metrics_at is not None:
            # The HTTP server is a thread: start it once the workers are forked, so the
            # first forks happen while the parent has no thread at all.
            inner = supervisor.on_ready

            def ready_with_metrics() -> None:
                port = metrics.serve_multiprocess(*metrics_at)
                log.info("metrics on http://%s:%d/metrics", metrics_at[0], port)
                inner()

            supervisor.on_ready = ready_with_metrics
        return supervisor.run()
    finally:
        for lst in listeners:
            lst.reservation.close()
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
