"""Prefetch benchmark: FETCH bodies and a BODY search over a 20 ms-latency FS.

For sdbox and mdbox, 200 messages (2-24 KiB, deterministic) are saved on a plain posix
FS, then read back through ``latency:20ms:posix`` with ``prefetch`` = 1, 10 and 32:

* ``fetch_body``: ``Mailbox.fetch_many(uids, FetchParts(body=True))``, every body read
  to its end by the consumer;
* ``search_body``: ``Mailbox.search(Text("body", needle))`` where the needle is in 10 %
  of the messages, near their end, so every body is read.

Each result is one JSON line: wall time, the round trips per message actually done
(counted at depth 1 by a wrapper that counts "waves": times the number of FS operations
in flight rose from zero), the FS operations per message (at that depth), the ideal time
``ceil(200 / depth) * round_trips_per_message * 20 ms``, the ratio to it and the
speed-up over depth 1 of the same run.  Targets: depth 10 at least 8x faster than
depth 1, and within 1.3x of the ideal.

    python bench/prefetch_bench.py [--messages 200] [--latency-ms 20] [--depths 1,10,32]
                                   [--formats sdbox,mdbox] [--rounds 3] [--repeat-depth1]
                                   [--dir DIR]

Each depth runs ``--rounds`` times, alternating with the other depths (depth 1, which
takes ~10 s, once unless ``--repeat-depth1``); the median is reported with every run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from aiodbox.config import StorageConfig
from aiodbox.fs import FS, FileHandle, open_fs
from aiodbox.fs.wrappers.base import WrapperFS, WrapperHandle
from aiodbox.storage import Storage
from aiodbox.storage.fetch import FetchParts
from aiodbox.storage.mailbox import Mailbox
from aiodbox.storage.search import Text

NEEDLE = "zanzibar-quokka"


class _Waves:
    def __init__(self) -> None:
        self.in_flight = 0
        self.waves = 0
        self.ops = 0

    def begin(self) -> None:
        self.ops += 1
        if self.in_flight == 0:
            self.waves += 1
        self.in_flight += 1

    def end(self) -> None:
        self.in_flight -= 1


class _WaveHandle(WrapperHandle):
    def __init__(self, inner: FileHandle, waves: _Waves) -> None:
        super().__init__(inner)
        self._w = waves
        self._opening = not inner.opened
        self._pending: set[int] = set()
        if self._opening:
            waves.begin()

    def _on_inner_open(self) -> None:
        if self._opening:
            self._opening = False
            self._w.end()
        super()._on_inner_open()

    def _on_inner_input(self, start: int | None, end: int | None) -> None:
        for off in list(self._pending):
            if start is None or end is None or start <= off < end:
                self._pending.discard(off)
                self._w.end()
        super()._on_inner_input(start, end)

    def pread(self, size: int, offset: int) -> bytes:
        try:
            return self.inner.pread(size, offset)
        except BlockingIOError:
            if offset not in self._pending and not self._opening:
                self._pending.add(offset)
                self._w.begin()
            raise

    def close(self) -> None:
        self._drop()
        super().close()

    async def aclose(self) -> None:
        self._drop()
        await super().aclose()

    def _drop(self) -> None:
        for _ in self._pending:
            self._w.end()
        self._pending.clear()
        if self._opening:
            self._opening = False
            self._w.end()


class WaveFS(WrapperFS):
    """Counts FS operations and round trips ("waves" of operations in flight)."""

    name = "waves"

    def __init__(self, inner: FS) -> None:
        super().__init__(inner)
        self.waves = _Waves()

    def wrap(self, handle: FileHandle) -> FileHandle:
        return _WaveHandle(handle, self.waves)


def make_message(rng: random.Random, n: int, with_needle: bool) -> bytes:
    words = ["alpha", "beta", "gamma", "delta", "mail", "store", "latency", "prefetch"]
    size = rng.randint(2 << 10, 24 << 10)
    lines: list[str] = []
    total = 0
    while total < size:
        line = " ".join(rng.choice(words) for _ in range(12)) + "\r\n"
        lines.append(line)
        total += len(line)
    if with_needle:
        lines.append(f"the word is {NEEDLE}\r\n")
    head = (
        f"From: Sender {n} <s{n}@example.test>\r\nTo: r@example.test\r\n"
        f"Subject: bench message {n}\r\nDate: Tue, 02 Jan 2024 09:00:00 +0000\r\n"
        f"Message-ID: <b{n}@example.test>\r\n\r\n"
    )
    return (head + "".join(lines)).encode()


def config(root: Path, fmt: str, spec: str) -> StorageConfig:
    return StorageConfig(
        format=fmt,
        mail_root=root / "mail",
        index_root=root / "index",
        fs=spec,
        fsync="never",
    )


async def populate(root: Path, fmt: str, count: int) -> list[int]:
    rng = random.Random(5)
    storage = Storage(config(root, fmt, "posix"))
    try:
        mbox = await (await storage.user("bench")).open_mailbox("INBOX")
        tx = mbox.transaction()
        for n in range(count):
            await tx.save(make_message(rng, n, n % 10 == 3))
        uids = (await tx.commit()).saved_uids
        await mbox.close()
    finally:
        await storage.close()
    return uids


async def fetch_bodies(mbox: Mailbox, uids: list[int], depth: int) -> int:
    total = 0
    async for fetched in mbox.fetch_many(uids, FetchParts(body=True), prefetch=depth):
        async for chunk in fetched.open_body():
            total += len(chunk)
        await fetched.aclose()
    return total


async def search_bodies(mbox: Mailbox, uids: list[int], depth: int) -> int:
    return len([u async for u in mbox.search(Text("body", NEEDLE), prefetch=depth)])


Op = Callable[[Mailbox, list[int], int], Awaitable[int]]


async def measure(
    root: Path, fmt: str, latency_ms: float, op: Op, uids: list[int], depth: int
) -> tuple[float, int, int, int]:
    """(seconds, waves, ops, result) of one run on a fresh storage (cold handle caches)."""
    cfg = config(root, fmt, f"latency:{latency_ms}ms:posix")
    fs = WaveFS(open_fs(cfg.fs, root=str(cfg.mail_root), fsync="never"))
    storage = Storage(cfg, fs=fs)
    try:
        mbox = await (await storage.user("bench")).open_mailbox("INBOX")
        await mbox.records(uids[:1])  # warm the index connection
        start = time.perf_counter()
        result = await op(mbox, uids, depth)
        seconds = time.perf_counter() - start
        await mbox.close()
    finally:
        await storage.close()
    return seconds, fs.waves.waves, fs.waves.ops, result


async def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--messages", type=int, default=200)
    ap.add_argument("--latency-ms", type=float, default=20.0)
    ap.add_argument("--depths", default="1,10,32")
    ap.add_argument("--formats", default="sdbox,mdbox")
    ap.add_argument("--rounds", type=int, default=3, help="runs per depth (median reported)")
    ap.add_argument(
        "--repeat-depth1", action="store_true", help="repeat the slow depth-1 run every round"
    )
    ap.add_argument("--dir", help="work directory (default: a temp dir under /var/tmp)")
    args = ap.parse_args()
    depths = [int(d) for d in args.depths.split(",")]
    base = Path(tempfile.mkdtemp(prefix="prefetch-bench-", dir=args.dir or "/var/tmp"))
    ops: dict[str, Op] = {"fetch_body": fetch_bodies, "search_body": search_bodies}
    try:
        for fmt in args.formats.split(","):
            root = base / fmt
            uids = await populate(root, fmt, args.messages)
            for name, op in ops.items():
                runs: dict[int, list[float]] = {d: [] for d in depths}
                counts: dict[int, tuple[int, int]] = {}
                for round_ in range(args.rounds):
                    for depth in depths:  # alternating, so drift hits every depth alike
                        if depth == 1 and round_ > 0 and not args.repeat_depth1:
                            continue
                        seconds, waves, n_ops, result = await measure(
                            root, fmt, args.latency_ms, op, uids, depth
                        )
                        runs[depth].append(seconds)
                        counts.setdefault(depth, (waves, n_ops))
                rt_per_msg = counts[min(depths)][0] / len(uids)
                baseline = statistics.median(runs[1]) if 1 in runs else None
                for depth in depths:
                    seconds = statistics.median(runs[depth])
                    waves, n_ops = counts[depth]
                    ideal = (
                        math.ceil(len(uids) / depth) * round(rt_per_msg) * args.latency_ms / 1000
                    )
                    line: dict[str, Any] = {
                        "bench": "prefetch",
                        "format": fmt,
                        "op": name,
                        "messages": len(uids),
                        "latency_ms": args.latency_ms,
                        "depth": depth,
                        "seconds": round(seconds, 3),
                        "runs": [round(x, 3) for x in runs[depth]],
                        "round_trips_per_msg": round(rt_per_msg, 3),
                        "fs_ops_per_msg": round(n_ops / len(uids), 2),
                        "waves": waves,
                        "ideal_seconds": round(ideal, 3),
                        "ratio_to_ideal": round(seconds / ideal, 3),
                        "speedup_vs_depth1": round(baseline / seconds, 2) if baseline else None,
                        "result": result,
                    }
                    print(json.dumps(line), flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
