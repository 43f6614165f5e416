"""IMAP server benchmark: aiodbox against Dovecot 2.3, in the same invocation.

    python3 bench/imap_bench.py [--quick] [--fs posix|uring|posix,uring] [--formats sdbox,mdbox]
                                [--only fetch4k,fetch1m,append,noop,memory] [--cold]
                                [--idle-users one,distinct] [--idle-settle S]
                                [--dir DIR] [--keep]

One command from a clean machine: when Dovecot is missing and this runs as root on
Debian, it installs ``dovecot-imapd`` and ``dovecot-lmtpd`` with apt-get (the packages'
own daemon is kept from starting).  The bench itself needs only the standard library
(uvloop is used for the client when importable); aiodbox is started with
``<repo>/.venv/bin/python -m aiodbox.cli.main --config <file> serve --workers 1``.  When
aiodbox cannot be started, every aiodbox row says so in ``"error"`` and has no value.

Servers, all on 127.0.0.1 with a free port, each with its own directory under ``--dir``
(default: a new directory under /var/tmp, removed at the end unless ``--keep``):

- Dovecot (``/usr/sbin/dovecot -F`` with a generated config, see dovecot_harness.py), one
  instance per format (``sdbox:~/sdbox``, ``mdbox:~/mdbox``), ``mail_fsync = always``.
  Variant ``process_per_connection`` is Dovecot's default imap service
  (``client_limit = 1``); ``one_process`` has ``client_limit = 2100, process_limit = 1``.
- aiodbox, one instance per (format, fs), ``[storage] fsync = "always"``, one process.

Both sides fsync every save (Dovecot: mail and index files after every write).  Each
scenario prints one JSON line per (scenario, server, format[, fs | variant]) with
``value`` and ``unit``, details, and ``ratio`` = aiodbox / Dovecot of the same format
(Dovecot's baseline row has ``ratio`` 1.0; reference rows have none).  For ``per_connection
_kib`` and latencies lower is better, for rates higher is better (``better`` says which).
``uring`` rows also carry ``ratio_vs_posix``.  Rates are compared only within one run.

Scenarios (sizes for full / ``--quick``):

``fetch4k``  One connection, INBOX of 2000 / 500 messages of 4 KiB:
             ``UID FETCH 1:* (BODY.PEEK[])``, 7 / 3 timed rounds after one untimed round
             that checks every body's SHA-256; servers alternate within each round.
             Value: median messages/s (also MB/s).  Page cache warm (``--cold``: also
             rounds after evicting the server's mail and index files from the cache).
``fetch1m``  The same over 200 / 50 messages of 1 MiB.  Value: median MB/s.
``append``   4 connections of one user APPEND 4 KiB messages to its INBOX, 500 / 100 per
             connection per round, LITERAL+ pipelined with a window of ``--append-window``
             (default 1: each APPEND waits for its OK, as mail clients do), 3 / 2 rounds.
             Value: median messages/s.  Afterwards every appended body is fetched and
             checked.
``noop``     20 connections (INBOX of 100 x 4 KiB selected) send a NOOP every 20 ms
             each; first 2 s without load (``idle_p50_ms``, ``idle_p99_ms``), then while
             a 21st connection loops ``UID FETCH 1:* (BODY.PEEK[])`` over the 1 MiB
             mailbox for 10 / 4 s.  Value: p99 NOOP latency under load in ms (send to
             tagged OK).  Dovecot's baseline is ``one_process`` (the issue's "everything
             in one process"); ``process_per_connection`` is reported for reference.
             ``fetch_MBps`` is what the fetching connection got meanwhile.
``memory``   The server is restarted and warmed up with one session, PSS is summed over
             its whole process tree, then 1000 / 200 connections log in and SELECT INBOX;
             after they settle (and one NOOP each proves them alive) PSS is summed again.
             Value: (after - before) / connections in KiB.  ``anon_per_connection_kib``
             is the same from ``Pss_Anon``, which unrelated processes mapping the same
             libraries cannot move.  ``users=one``: all connections are one user whose
             INBOX holds 100 x 4 KiB; ``users=distinct``: one user per connection, each
             with an (already created) empty INBOX.  Dovecot's baseline is
             ``process_per_connection``; ``one_process`` is reported for reference.
             ``settled_per_connection_kib``: the same after the connections idled
             ``--idle-settle`` more seconds (default 12: aiodbox closes a user's
             SQLite connections after 10 s without use and gives the memory back).

Goals from the issue (aiodbox rows carry ``goal`` and ``meets_goal``): ≤ 40 KiB per idle
connection; NOOP p99 ≤ 5 ms under the FETCH load in one process; APPEND ≥ 0.7x,
FETCH 4 KiB ≥ 0.4x, FETCH 1 MiB ≥ 1.0x Dovecot.

The client is one Python process (bench/imap_load.py); ``client_cpu_s`` shows how much CPU
it used for the timed part: on 2 cores, a client near 100% of the wall time limits what
can be measured.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dovecot_harness as harness
import imap_load as load
from dovecot_harness import (
    AiodboxServer,
    DovecotServer,
    HarnessError,
    ManagedServer,
    ServerVariant,
)

ROOT = Path(__file__).resolve().parents[1]
KIB = 1024
MIB = 1 << 20
PPC = ServerVariant.PROCESS_PER_CONNECTION
ONE = ServerVariant.ONE_PROCESS


@dataclass(frozen=True, slots=True)
class Sizes:
    """How much work each scenario does."""

    fetch4k_count: int
    fetch1m_count: int
    fetch_rounds: int
    append_per_conn: int
    append_rounds: int
    noop_seconds: float
    idle_connections: int
    idle_inbox: int = 100
    append_conns: int = 4
    noop_conns: int = 20
    noop_interval: float = 0.020
    noop_idle_seconds: float = 2.0
    noop_warmup: float = 0.5


FULL = Sizes(2000, 200, 7, 500, 3, 10.0, 1000)
QUICK = Sizes(500, 50, 3, 100, 2, 4.0, 200)

GOALS: dict[str, tuple[str, Callable[[float, float | None], bool]]] = {
    "memory": ("<= 40 KiB per idle connection", lambda v, r: v <= 40.0),
    "noop": ("p99 <= 5 ms under the FETCH load", lambda v, r: v <= 5.0),
    "append": ("ratio >= 0.7", lambda v, r: r is not None and r >= 0.7),
    "fetch4k": ("ratio >= 0.4", lambda v, r: r is not None and r >= 0.4),
    "fetch1m": ("ratio >= 1.0", lambda v, r: r is not None and r >= 1.0),
}


def log(msg: str) -> None:
    """Progress for humans, on stderr (stdout carries only the JSON lines)."""
    print(f"# {time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def emit(row: dict[str, Any]) -> None:
    """One JSON line on stdout."""
    print(json.dumps(row, sort_keys=False), flush=True)


def password_of(user: str) -> str:
    """Every bench user's password (with a space: LOGIN must quote it)."""
    return f"bench {user}"


@dataclass
class Target:
    """One server under test, with what has been stored in it."""

    kind: str  # "dovecot" | "aiodbox"
    format: str
    server: ManagedServer
    fs: str | None = None
    error: str | None = None
    stored: dict[str, collections.Counter[tuple[int, str]]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """``dovecot/sdbox``, ``aiodbox/mdbox/uring``."""
        parts = [self.kind, self.format] + ([self.fs] if self.fs else [])
        return "/".join(parts)

    @property
    def available(self) -> bool:
        """Started and not failed."""
        return self.error is None

    def fail(self, err: str) -> None:
        """Mark unavailable for the rest of the run (the server is stopped)."""
        self.error = err
        with contextlib.suppress(Exception):
            self.server.stop()

    def base_row(self, scenario: str) -> dict[str, Any]:
        """The identifying fields of a JSON line."""
        row: dict[str, Any] = {"bench": "imap", "scenario": scenario, "server": self.kind}
        row["format"] = self.format
        if self.fs:
            row["fs"] = self.fs
        if self.kind == "dovecot" and isinstance(self.server, DovecotServer):
            row["variant"] = self.server.variant.value
        return row

    async def session(
        self, user: str, mailbox: str | None = "INBOX", timeout: float = 120.0
    ) -> tuple[load.ImapClient, int]:
        """A logged-in (and selected) connection."""
        return await load.open_session(
            self.server.host,
            self.server.port,
            user,
            password_of(user),
            mailbox,
            timeout=timeout,
        )


class LoopTimer:
    """A 5 ms timer on the client's loop; ``worst`` is its worst lateness in seconds."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t0 = loop.time()
            await asyncio.sleep(0.005)
            self.worst = max(self.worst, loop.time() - t0 - 0.005)

    def __enter__(self) -> LoopTimer:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()


class Bench:
    """Runs the scenarios over the targets and prints the rows."""

    def __init__(self, args: argparse.Namespace, sizes: Sizes, workdir: Path) -> None:
        self.args = args
        self.sizes = sizes
        self.workdir = workdir
        self.targets: list[Target] = []
        self.sets = {
            "f4k": load.MessageSet(sizes.fetch4k_count, 4 * KIB, "f4k"),
            "f1m": load.MessageSet(sizes.fetch1m_count, MIB, "f1m"),
            "idle": load.MessageSet(sizes.idle_inbox, 4 * KIB, "idle"),
        }
        self.distinct_users = [f"idle{i:04d}" for i in range(sizes.idle_connections)]

    # -- setup

    def users(self) -> dict[str, str]:
        """Everybody who logs in, with passwords."""
        names = ["f4k", "f1m", "idle", "append", *self.distinct_users]
        return {u: password_of(u) for u in names}

    async def start_all(self) -> None:
        """Create and start every server (aiodbox failures become row errors)."""
        users = self.users()
        for fmt in self.args.formats:
            d = DovecotServer(self.workdir / f"dovecot-{fmt}", fmt, PPC)
            self.targets.append(Target("dovecot", fmt, d))
            for fs in self.args.fs:
                a = AiodboxServer(
                    self.workdir / f"aiodbox-{fmt}-{fs}",
                    fmt,
                    fs=fs,
                    python=self.args.aiodbox_python,
                    src_dir=ROOT / "src",
                )
                a.start_timeout = self.args.start_timeout
                self.targets.append(Target("aiodbox", fmt, a, fs=fs))
        for t in self.targets:
            t.server.set_users(users)
            log(f"starting {t.label}")
            try:
                await asyncio.to_thread(t.server.start)
                log(f"{t.label} listens on {t.server.host}:{t.server.port} (pid {t.server.pid})")
            except (HarnessError, OSError) as e:
                if t.kind == "dovecot":
                    raise
                t.fail(f"aiodbox not available: {e}")
                log(f"{t.label}: {t.error}")

    async def populate(self, t: Target) -> None:
        """Store the fetch and idle mailboxes (pipelined LITERAL+ APPENDs)."""
        only = self.args.only
        wanted = []
        if "fetch4k" in only:
            wanted.append("f4k")
        if {"fetch1m", "noop"} & only:
            wanted.append("f1m")
        if {"noop", "memory"} & only:
            wanted.append("idle")
        for user in wanted:
            mset = self.sets[user]
            t0 = time.perf_counter()
            window = 4 if mset.size >= MIB else 32
            n = await load.populate(
                t.server.host,
                t.server.port,
                user,
                password_of(user),
                mset.messages(),
                window=window,
            )
            t.stored[user] = mset.digests()
            dt = time.perf_counter() - t0
            log(f"{t.label}: stored {n} x {mset.size} B for {user} in {dt:.1f} s")

    async def for_each_available(
        self, what: str, fn: Callable[[Target], Awaitable[None]], kinds: Sequence[str] = ()
    ) -> None:
        """Run ``fn`` per available target; an aiodbox failure marks it unavailable."""
        for t in self.targets:
            if not t.available or (kinds and t.kind not in kinds):
                continue
            try:
                await fn(t)
            except Exception as e:
                if t.kind == "dovecot":
                    raise
                t.fail(f"aiodbox failed during {what}: {e!r}")
                log(f"{t.label}: {t.error}")

    # -- rows

    def finish_rows(self, scenario: str, rows: list[tuple[Target, dict[str, Any]]]) -> None:
        """Add ratios and goals, print.  ``rows``: (target, row with ``value``); rows of
        Dovecot's baseline variant have ``baseline`` True."""
        base: dict[str, float] = {}
        for t, row in rows:
            if t.kind == "dovecot" and row.get("baseline") and row.get("value") is not None:
                base[t.format] = row["value"]
        posix: dict[str, float] = {}
        for t, row in rows:
            if t.kind == "aiodbox" and t.fs == "posix" and row.get("value") is not None:
                posix[t.format] = row["value"]
        for t, row in rows:
            value = row.get("value")
            if t.kind == "dovecot":
                row["ratio"] = 1.0 if row.get("baseline") else None
            else:
                b = base.get(t.format)
                row["ratio"] = round(value / b, 3) if value is not None and b else None
                if t.fs not in (None, "posix") and value is not None and posix.get(t.format):
                    row["ratio_vs_posix"] = round(value / posix[t.format], 3)
                goal = GOALS.get(scenario)
                if goal is not None:
                    row["goal"] = goal[0]
                    row["meets_goal"] = goal[1](value, row["ratio"]) if value is not None else None
            emit(row)

    def unavailable_rows(
        self, scenario: str, extra: dict[str, Any] | None = None
    ) -> list[tuple[Target, dict[str, Any]]]:
        """Rows for aiodbox targets that are not available: value None, the error."""
        out = []
        for t in self.targets:
            if t.available:
                continue
            row = t.base_row(scenario) | (extra or {})
            row.update(value=None, error=t.error)
            out.append((t, row))
        return out

    # -- fetch

    async def fetch(self, scenario: str, user: str) -> None:
        """``fetch4k`` / ``fetch1m``: see the module docstring."""
        mset = self.sets[user]
        sessions: dict[int, load.ImapClient] = {}
        verified: dict[int, str | None] = {}

        async def open_and_verify(t: Target) -> None:
            c, exists = await t.session(user, timeout=self.args.timeout)
            sessions[id(t)] = c
            if exists != mset.count:
                raise RuntimeError(f"INBOX of {user} has {exists} messages, not {mset.count}")
            res = await c.fetch_bodies("1:*", load.LiteralMode.SHA256)
            verified[id(t)] = load.check_bodies(res.bodies, t.stored[user])

        await self.for_each_available(f"{scenario} setup", open_and_verify)
        live = [t for t in self.targets if t.available and id(t) in sessions]
        caches = ["warm", "cold"] if self.args.cold else ["warm"]
        for cache in caches:
            times: dict[int, list[float]] = {id(t): [] for t in live}
            cpu: dict[int, list[float]] = {id(t): [] for t in live}
            errors: dict[int, str] = {}
            for r in range(self.sizes.fetch_rounds):
                k = r % len(live) if live else 0
                for t in live[k:] + live[:k]:
                    if id(t) in errors or not t.available:
                        continue
                    if cache == "cold":
                        await asyncio.to_thread(harness.evict_page_cache, t.server.data_dirs())
                    c0 = time.process_time()
                    try:
                        res = await sessions[id(t)].fetch_bodies("1:*", load.LiteralMode.COUNT)
                    except Exception as e:
                        if t.kind == "dovecot":
                            raise
                        errors[id(t)] = f"FETCH failed: {e!r}"
                        continue
                    cpu[id(t)].append(time.process_time() - c0)
                    if len(res.bodies) != mset.count or res.nbytes != mset.count * mset.size:
                        errors[id(t)] = (
                            f"FETCH returned {len(res.bodies)} bodies / {res.nbytes} B, "
                            f"expected {mset.count} / {mset.count * mset.size}"
                        )
                        continue
                    times[id(t)].append(res.seconds)
            rows: list[tuple[Target, dict[str, Any]]] = []
            extra = {"cache": cache, "messages": mset.count, "message_size": mset.size}
            for t in live:
                row = t.base_row(scenario) | extra
                if t.kind == "dovecot":
                    row["baseline"] = True
                err = errors.get(id(t)) or (
                    f"bodies differ from what was appended: {verified[id(t)]}"
                    if verified.get(id(t))
                    else None
                )
                ts = times[id(t)]
                if err or not ts:
                    row.update(value=None, error=err or "no round completed")
                    if t.kind == "dovecot":
                        raise RuntimeError(f"{t.label} {scenario}: {row['error']}")
                    rows.append((t, row))
                    continue
                med = statistics.median(ts)
                msgs = mset.count / med
                mbps = mset.count * mset.size / med / 1e6
                if scenario == "fetch1m":
                    row.update(value=round(mbps, 1), unit="MB/s", messages_per_s=round(msgs, 1))
                else:
                    row.update(value=round(msgs, 1), unit="messages/s", MBps=round(mbps, 2))
                row.update(
                    better="higher",
                    median_s=round(med, 5),
                    best_s=round(min(ts), 5),
                    rounds=len(ts),
                    client_cpu_s=round(statistics.median(cpu[id(t)]), 5),
                    verified_sha256=True,
                )
                rows.append((t, row))
            self.finish_rows(scenario, rows + self.unavailable_rows(scenario, extra))
        for c in sessions.values():
            await c.logout()

    # -- append

    async def append(self) -> None:
        """``append``: see the module docstring."""
        s = self.sizes
        window = self.args.append_window
        live = [t for t in self.targets if t.available]
        conns: dict[int, list[load.ImapClient]] = {}
        appended: dict[int, collections.Counter[tuple[int, str]]] = {}

        async def setup(t: Target) -> None:
            cs = []
            for _ in range(s.append_conns):
                c, _n = await t.session("append", None, timeout=self.args.timeout)
                cs.append(c)
            conns[id(t)] = cs
            probe, exists = await t.session("append", "INBOX", self.args.timeout)
            await probe.logout()
            if exists:
                raise RuntimeError(f"the append user's INBOX is not empty ({exists})")
            appended[id(t)] = collections.Counter()

        await self.for_each_available("append setup", setup)
        live = [t for t in live if t.available and id(t) in conns]
        times: dict[int, list[float]] = {id(t): [] for t in live}
        errors: dict[int, str] = {}
        for r in range(s.append_rounds):
            batches = [
                load.MessageSet(s.append_per_conn, 4 * KIB, f"append-r{r}-c{i}")
                for i in range(s.append_conns)
            ]
            msgs = [list(b.messages()) for b in batches]
            digests = collections.Counter[tuple[int, str]]()
            for b in batches:
                digests.update(b.digests())
            k = r % len(live) if live else 0
            for t in live[k:] + live[:k]:
                if id(t) in errors:
                    continue
                t0 = time.perf_counter()
                try:
                    await asyncio.gather(
                        *(
                            c.append_many("INBOX", m, window)
                            for c, m in zip(conns[id(t)], msgs, strict=True)
                        )
                    )
                except Exception as e:
                    if t.kind == "dovecot":
                        raise
                    errors[id(t)] = f"APPEND failed: {e!r}"
                    continue
                times[id(t)].append(time.perf_counter() - t0)
                appended[id(t)].update(digests)
        total = s.append_conns * s.append_per_conn
        rows: list[tuple[Target, dict[str, Any]]] = []
        extra = {
            "connections": s.append_conns,
            "messages_per_round": total,
            "message_size": 4 * KIB,
            "window": window,
        }
        for t in live:
            for c in conns[id(t)]:
                await c.logout()
            row = t.base_row("append") | extra
            row["literal_plus"] = conns[id(t)][0].literal_plus
            if t.kind == "dovecot":
                row["baseline"] = True
            err = errors.get(id(t))
            if not err:
                try:
                    err = await self._verify_append(t, appended[id(t)])
                except Exception as e:
                    err = f"verification failed: {e!r}"
            ts = times[id(t)]
            if err or not ts:
                row.update(value=None, error=err or "no round completed")
                if t.kind == "dovecot":
                    raise RuntimeError(f"{t.label} append: {row['error']}")
            else:
                med = statistics.median(ts)
                row.update(
                    value=round(total / med, 1),
                    unit="messages/s",
                    better="higher",
                    median_s=round(med, 4),
                    best_s=round(min(ts), 4),
                    rounds=len(ts),
                    verified_sha256=True,
                )
            rows.append((t, row))
        self.finish_rows("append", rows + self.unavailable_rows("append", extra))

    async def _verify_append(
        self, t: Target, expected: collections.Counter[tuple[int, str]]
    ) -> str | None:
        """Every appended body, and nothing else, is in the (initially empty) INBOX."""
        c, exists = await t.session("append", "INBOX", self.args.timeout)
        try:
            if exists != sum(expected.values()):
                return f"INBOX has {exists} messages, expected {sum(expected.values())}"
            res = await c.fetch_bodies("1:*", load.LiteralMode.SHA256)
            return load.check_bodies(res.bodies, expected)
        finally:
            await c.logout()

    # -- noop

    async def noop(self) -> None:
        """``noop``: see the module docstring."""
        rows: list[tuple[Target, dict[str, Any]]] = []
        extra = {
            "connections": self.sizes.noop_conns,
            "interval_ms": self.sizes.noop_interval * 1e3,
            "fetch_messages": self.sizes.fetch1m_count,
            "fetch_message_size": MIB,
        }

        async def run(t: Target) -> None:
            if t.kind == "dovecot" and isinstance(t.server, DovecotServer):
                for variant in (ONE, PPC):
                    await asyncio.to_thread(t.server.restart_as, variant)
                    row = await self._noop_one(t) | extra
                    row["baseline"] = variant is ONE
                    rows.append((t, row))
            else:
                row = await self._noop_one(t) | extra
                rows.append((t, row))

        await self.for_each_available("noop", run)
        self.finish_rows("noop", rows + self.unavailable_rows("noop", extra))

    async def _noop_one(self, t: Target) -> dict[str, Any]:
        s = self.sizes
        row = t.base_row("noop")
        log(f"{t.label} {row.get('variant', '')}: noop under fetch")
        clients = [
            (await t.session("idle", timeout=self.args.timeout))[0] for _ in range(s.noop_conns)
        ]
        fetcher: subprocess.Popen[bytes] | None = None
        try:
            idle_lat: list[float] = []
            stop = asyncio.Event()
            tasks = [
                asyncio.create_task(
                    load.noop_loop(
                        c, stop, s.noop_interval, idle_lat, phase=i * s.noop_interval / len(clients)
                    )
                )
                for i, c in enumerate(clients)
            ]
            await asyncio.sleep(s.noop_idle_seconds)
            stop.set()
            await asyncio.gather(*tasks)

            fetcher = await asyncio.to_thread(
                subprocess.Popen,
                [
                    sys.executable,
                    str(Path(__file__).with_name("imap_load.py")),
                    "fetch-loop",
                    t.server.host,
                    str(t.server.port),
                    "f1m",
                    password_of("f1m"),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            assert fetcher.stdout is not None
            ready = await asyncio.wait_for(
                asyncio.to_thread(fetcher.stdout.readline), self.args.timeout
            )
            if ready.strip() != b"ready":
                raise RuntimeError(f"the FETCH load process did not start: {ready!r}")
            await asyncio.sleep(s.noop_warmup)
            lat: list[float] = []
            stop = asyncio.Event()
            with LoopTimer() as timer:
                tasks = [
                    asyncio.create_task(
                        load.noop_loop(
                            c, stop, s.noop_interval, lat, phase=i * s.noop_interval / len(clients)
                        )
                    )
                    for i, c in enumerate(clients)
                ]
                t0 = time.perf_counter()
                await asyncio.sleep(s.noop_seconds)
                stop.set()
                await asyncio.gather(*tasks)
                measured = time.perf_counter() - t0
            out, err = await asyncio.to_thread(fetcher.communicate, None, self.args.timeout)
            if fetcher.returncode != 0:
                raise RuntimeError(
                    f"the FETCH load process failed ({fetcher.returncode}): "
                    f"{err.decode(errors='replace')[-500:]}"
                )
            done = json.loads(out.splitlines()[-1])
            n, nbytes, fetch_s = done["messages"], done["bytes"], done["seconds"]
        finally:
            if fetcher is not None and fetcher.poll() is None:
                fetcher.kill()
                await asyncio.to_thread(fetcher.wait)
            for c in clients:
                await c.logout()
        row.update(
            value=round(load.percentile(lat, 0.99) * 1e3, 3),
            unit="ms",
            better="lower",
            p50_ms=round(load.percentile(lat, 0.50) * 1e3, 3),
            p999_ms=round(load.percentile(lat, 0.999) * 1e3, 3),
            max_ms=round(max(lat) * 1e3, 3),
            noops=len(lat),
            seconds=round(measured, 2),
            idle_p50_ms=round(load.percentile(idle_lat, 0.50) * 1e3, 3),
            idle_p99_ms=round(load.percentile(idle_lat, 0.99) * 1e3, 3),
            fetch_MBps=round(nbytes / fetch_s / 1e6, 1),  # warm-up to the end of its command
            fetch_messages_done=n,
            client_loop_worst_late_ms=round(timer.worst * 1e3, 2),
        )
        return row

    # -- memory

    async def memory(self) -> None:
        """``memory``: see the module docstring."""
        rows: list[tuple[Target, dict[str, Any]]] = []
        n = self.sizes.idle_connections
        modes = self.args.idle_users

        if "distinct" in modes:
            await self.for_each_available("memory setup", self._create_distinct_inboxes)

        async def run(t: Target) -> None:
            for mode in modes:
                if t.kind == "dovecot" and isinstance(t.server, DovecotServer):
                    for variant in (PPC, ONE):
                        await asyncio.to_thread(t.server.restart_as, variant)
                        row = await self._memory_one(t, mode)
                        row["baseline"] = variant is PPC
                        rows.append((t, row))
                    await asyncio.to_thread(t.server.restart_as, PPC)
                else:
                    await asyncio.to_thread(t.server.restart)
                    rows.append((t, await self._memory_one(t, mode)))

        await self.for_each_available("memory", run)
        by_mode: dict[str, list[tuple[Target, dict[str, Any]]]] = {m: [] for m in modes}
        for t, row in rows:
            by_mode[row["users"]].append((t, row))
        for mode in modes:
            extra = {"users": mode, "connections": n}
            self.finish_rows("memory", by_mode[mode] + self.unavailable_rows("memory", extra))

    async def _create_distinct_inboxes(self, t: Target) -> None:
        """Log every distinct user in once and SELECT INBOX (creates mail dirs, indexes)."""
        log(f"{t.label}: creating {len(self.distinct_users)} users' INBOXes")
        sem = asyncio.Semaphore(16)

        async def one(user: str) -> None:
            async with sem:
                c, _ = await t.session(user, timeout=self.args.timeout)
                await c.logout()

        await asyncio.gather(*(one(u) for u in self.distinct_users))

    async def _memory_one(self, t: Target, mode: str) -> dict[str, Any]:
        n = self.sizes.idle_connections
        row = t.base_row("memory") | {"users": mode, "connections": n}
        log(f"{t.label} {row.get('variant', '')}: {n} idle connections, users={mode}")
        # Warm-up: one session, so that code a server loads on first use (modules,
        # plugins, caches) is in "before" and not spread over the connections.
        c, _ = await t.session("idle", timeout=self.args.timeout)
        await c.noop()
        await c.logout()
        await asyncio.sleep(1.0)
        before = await asyncio.to_thread(t.server.memory_kib)
        users = ["idle"] * n if mode == "one" else self.distinct_users[:n]
        sem = asyncio.Semaphore(32)
        clients: list[load.ImapClient] = []
        t0 = time.perf_counter()

        async def one(user: str) -> None:
            async with sem:
                c, _ = await t.session(user, timeout=self.args.timeout)
                clients.append(c)

        try:
            results = await asyncio.gather(*(one(u) for u in users), return_exceptions=True)
            failed = [r for r in results if isinstance(r, BaseException)]
            if failed:
                raise RuntimeError(
                    f"{len(failed)} of {n} connections failed to log in and select; "
                    f"first: {failed[0]!r}"
                )
            connect_s = time.perf_counter() - t0
            await asyncio.sleep(2.0)
            await asyncio.gather(*(c.noop() for c in clients))
            await asyncio.sleep(1.0)
            after = await asyncio.to_thread(t.server.memory_kib)
            settled = None
            if self.args.idle_settle > 0:
                await asyncio.sleep(self.args.idle_settle)
                settled = await asyncio.to_thread(t.server.memory_kib)
        finally:
            sem = asyncio.Semaphore(64)

            async def bye(c: load.ImapClient) -> None:
                async with sem:
                    await c.logout()

            await asyncio.gather(*(bye(c) for c in clients))
        row.update(
            value=round((after["Pss"] - before["Pss"]) / n, 1),
            unit="KiB/connection",
            better="lower",
            pss_before_kib=before["Pss"],
            pss_after_kib=after["Pss"],
            anon_per_connection_kib=round((after["Pss_Anon"] - before["Pss_Anon"]) / n, 1),
            pss_anon_before_kib=before["Pss_Anon"],
            pss_anon_after_kib=after["Pss_Anon"],
            rss_after_kib=after["Rss"],
            processes_before=before["processes"],
            processes_after=after["processes"],
            connect_s=round(connect_s, 2),
        )
        if settled is not None:
            row.update(
                settled_after_s=self.args.idle_settle,
                settled_per_connection_kib=round((settled["Pss"] - before["Pss"]) / n, 1),
                settled_anon_per_connection_kib=round(
                    (settled["Pss_Anon"] - before["Pss_Anon"]) / n, 1
                ),
            )
        return row


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="fewer connections and messages")
    ap.add_argument("--fs", default="posix", help="aiodbox backends: posix, uring, posix,uring")
    ap.add_argument("--formats", default="sdbox,mdbox", help="sdbox, mdbox or both")
    ap.add_argument(
        "--only",
        default="fetch4k,fetch1m,append,noop,memory",
        help="scenarios to run (comma-separated)",
    )
    ap.add_argument("--idle-users", default="one,distinct", help="memory scenario: one,distinct")
    ap.add_argument("--cold", action="store_true", help="fetch also with a cold page cache")
    ap.add_argument(
        "--idle-settle",
        type=float,
        default=12.0,
        help="memory: also measure after the connections idled this long (0: don't)",
    )
    ap.add_argument("--append-window", type=int, default=1, help="APPENDs in flight per conn")
    ap.add_argument("--connections", type=int, help="idle connections (default 1000 / 200)")
    ap.add_argument("--rounds", type=int, help="timed FETCH rounds (default 7 / 3)")
    ap.add_argument("--dir", help="work directory parent (default /var/tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the servers' directories")
    ap.add_argument("--timeout", type=float, default=300.0, help="per IMAP command, seconds")
    ap.add_argument("--start-timeout", type=float, default=60.0, help="aiodbox start, seconds")
    ap.add_argument(
        "--aiodbox-python",
        default=str(ROOT / ".venv" / "bin" / "python")
        if (ROOT / ".venv" / "bin" / "python").exists()
        else sys.executable,
        help="the Python that runs aiodbox (default: the repo's .venv)",
    )
    ap.add_argument("--client-loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = ap.parse_args(argv)
    args.fs = [x for x in args.fs.split(",") if x]
    args.formats = [x for x in args.formats.split(",") if x]
    args.only = {x for x in args.only.split(",") if x}
    args.idle_users = [x for x in args.idle_users.split(",") if x]
    known = {"fetch4k", "fetch1m", "append", "noop", "memory"}
    if args.only - known:
        ap.error(f"unknown scenarios {sorted(args.only - known)}; known: {sorted(known)}")
    if set(args.formats) - {"sdbox", "mdbox"} or not args.formats:
        ap.error("--formats takes sdbox, mdbox")
    if set(args.idle_users) - {"one", "distinct"} or not args.idle_users:
        ap.error("--idle-users takes one, distinct")
    if set(args.fs) - {"posix", "uring"}:
        ap.error("--fs takes posix, uring")
    return args


async def run(args: argparse.Namespace) -> int:
    """The whole bench; returns the exit code."""
    sizes = QUICK if args.quick else FULL
    if args.connections:
        sizes = dataclasses.replace(sizes, idle_connections=args.connections)
    if args.rounds:
        sizes = dataclasses.replace(sizes, fetch_rounds=args.rounds)
    await asyncio.to_thread(harness.ensure_dovecot)
    nofile = harness.raise_nofile_limit(4 * sizes.idle_connections + 1024)
    workdir = await asyncio.to_thread(harness.make_workdir, args.dir or "/var/tmp", "imap-bench-")
    log(f"work directory {workdir}; RLIMIT_NOFILE {nofile}")
    emit(
        {
            "bench": "imap",
            "scenario": "environment",
            "dovecot": await asyncio.to_thread(harness.dovecot_version),
            "kernel": platform.release(),
            "cpus": os.cpu_count(),
            "quick": args.quick,
            "client_loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
            "durability": "fsync always (Dovecot mail_fsync=always, aiodbox fsync=always)",
            "sizes": dataclasses.asdict(sizes),
            "workdir": str(workdir),
        }
    )
    bench = Bench(args, sizes, workdir)
    try:
        await bench.start_all()
        await bench.for_each_available("populating", bench.populate)
        if "fetch4k" in args.only:
            log("scenario fetch4k")
            await bench.fetch("fetch4k", "f4k")
        if "fetch1m" in args.only:
            log("scenario fetch1m")
            await bench.fetch("fetch1m", "f1m")
        if "append" in args.only:
            log("scenario append")
            await bench.append()
        if "noop" in args.only:
            log("scenario noop")
            await bench.noop()
        if "memory" in args.only:
            log("scenario memory")
            await bench.memory()
    except Exception:
        traceback.print_exc()
        return 1
    finally:
        for t in bench.targets:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(t.server.stop)
        if not args.keep:
            log(f"removing {workdir} (slow where the filesystem discards on delete)")
            await asyncio.to_thread(shutil.rmtree, workdir, True)
            log("done")
        else:
            log(f"kept {workdir}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    args = parse_args(argv)
    if args.client_loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(run(args))
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
