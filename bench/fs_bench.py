"""FS backend benchmark: aiodbox's backends vs aiofiles vs a plain executor.

Every scenario runs each implementation in the same invocation, in alternating rounds
(A B C A B C ...) so that drift of this noisy machine hits all of them alike, and prints
one JSON line per implementation with the median ops/s and the ratio to the executor
baseline (``loop.run_in_executor(ThreadPoolExecutor(10), ...)``, one hand-off per system
call) and to aiofiles.  A 5 ms timer runs on the same loop throughout;
``worst_timer_late_ms`` is its worst lateness over all rounds.

    python bench/fs_bench.py [--quick] [--rounds N] [--dir DIR] [--backends posix,uring]
                             [--only randread,small,commit]

Scenarios: 4 KiB random preads over a 1 GiB file at 1/16/64 in flight (warm and cold
page cache); whole-file reads of 2000 small files at 16 in flight (warm and cold);
create + 4 KiB write + commit with fsync x 500 at 16 in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiofiles
import aiofiles.os

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from aiodbox.fs import CreateMode, open_fs

BLOCK = 4096
Op = Callable[[int], Awaitable[None]]
# An implementation: set up, return (op, teardown).
Impl = Callable[[], Awaitable[tuple[Op, Callable[[], Awaitable[None]]]]]


def evict(paths: list[str]) -> None:
    """Drop the files' pages from the page cache (they are clean: written + fsynced)."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm(paths: list[str]) -> None:
    for p in paths:
        with open(p, "rb") as f:
            while f.read(1 << 20):
                pass


class Timer:
    """A 5 ms periodic timer measuring how late the loop runs it."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._stop = False
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stop:
            t0 = loop.time()
            await asyncio.sleep(0.005)
            self.worst = max(self.worst, loop.time() - t0 - 0.005)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> float:
        self._stop = True
        assert self._task is not None
        await self._task
        return self.worst


async def measure(depth: int, ops: int, op: Op) -> tuple[float, float]:
    """Run ``ops`` calls of ``op(i)`` with ``depth`` in flight; return (seconds, lateness)."""
    counter = iter(range(ops))
    timer = Timer()
    timer.start()

    async def worker() -> None:
        for i in counter:
            await op(i)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(depth)))
    elapsed = time.perf_counter() - t0
    return elapsed, await timer.stop()


async def run_scenario(
    label: dict[str, Any],
    impls: dict[str, Impl],
    depth: int,
    ops: int,
    rounds: int,
    prepare: Callable[[], Awaitable[None]],
) -> None:
    speeds: dict[str, list[float]] = {name: [] for name in impls}
    late: dict[str, float] = dict.fromkeys(impls, 0.0)
    for _ in range(rounds):
        for name, impl in impls.items():
            await prepare()
            op, teardown = await impl()
            secs, worst = await measure(depth, ops, op)
            await teardown()
            speeds[name].append(ops / secs)
            late[name] = max(late[name], worst)
    med = {name: statistics.median(v) for name, v in speeds.items()}
    for name in impls:
        row = {
            **label,
            "depth": depth,
            "impl": name,
            "ops": ops,
            "rounds": rounds,
            "ops_per_s": round(med[name]),
            "ratio_vs_executor": round(med[name] / med["executor"], 2),
            "ratio_vs_aiofiles": round(med[name] / med["aiofiles"], 2),
            "worst_timer_late_ms": round(late[name] * 1000, 2),
        }
        print(json.dumps(row), flush=True)


async def _noop() -> None:
    return None


# ------------------------------------------------------------ scenarios


async def random_reads(
    workdir: str, backends: list[str], size: int, depth: int, ops: int, cache: str, rounds: int
) -> None:
    path = os.path.join(workdir, "big.bin")
    blocks = size // BLOCK
    loop = asyncio.get_running_loop()
    rng = random.Random(depth)

    def offsets() -> list[int]:
        return [rng.randrange(blocks) * BLOCK for _ in range(ops)]

    async def prepare() -> None:
        await loop.run_in_executor(None, evict if cache == "cold" else warm, [path])

    async def executor_impl() -> tuple[Op, Callable[[], Awaitable[None]]]:
        pool = ThreadPoolExecutor(10)
        fd = os.open(path, os.O_RDONLY)
        offs = offsets()

        async def op(i: int) -> None:
            await loop.run_in_executor(pool, os.pread, fd, BLOCK, offs[i])

        async def teardown() -> None:
            os.close(fd)
            pool.shutdown()

        return op, teardown

    async def aiofiles_impl() -> tuple[Op, Callable[[], Awaitable[None]]]:
        files = [await aiofiles.open(path, "rb") for _ in range(depth)]
        free = list(files)
        offs = offsets()

        async def op(i: int) -> None:
            f = free.pop()
            await f.seek(offs[i])
            await f.read(BLOCK)
            free.append(f)

        async def teardown() -> None:
            for f in files:
                await f.close()

        return op, teardown

    def backend_impl(backend: str) -> Impl:
        async def impl() -> tuple[Op, Callable[[], Awaitable[None]]]:
            fs = open_fs(backend, root=workdir)
            h = fs.open("big.bin")
            await h.wait_open()
            offs = offsets()

            async def op(i: int) -> None:
                await h.read(BLOCK, offs[i])

            async def teardown() -> None:
                await h.aclose()
                await fs.aclose()

            return op, teardown

        return impl

    impls: dict[str, Impl] = {"executor": executor_impl, "aiofiles": aiofiles_impl}
    impls.update({b: backend_impl(b) for b in backends})
    await run_scenario(
        {"scenario": "randread_4k", "cache": cache}, impls, depth, ops, rounds, prepare
    )


async def small_files(
    workdir: str, backends: list[str], count: int, depth: int, cache: str, rounds: int
) -> None:
    d = os.path.join(workdir, "small")
    names = [f"f{i}" for i in range(count)]
    paths = [os.path.join(d, n) for n in names]
    loop = asyncio.get_running_loop()

    async def prepare() -> None:
        await loop.run_in_executor(None, evict if cache == "cold" else warm, paths)

    async def executor_impl() -> tuple[Op, Callable[[], Awaitable[None]]]:
        pool = ThreadPoolExecutor(10)

        async def op(i: int) -> None:
            fd = await loop.run_in_executor(pool, os.open, paths[i], os.O_RDONLY)
            try:
                while await loop.run_in_executor(pool, os.read, fd, 65536):
                    pass
            finally:
                await loop.run_in_executor(pool, os.close, fd)

        async def teardown() -> None:
            pool.shutdown()

        return op, teardown

    async def aiofiles_impl() -> tuple[Op, Callable[[], Awaitable[None]]]:
        async def op(i: int) -> None:
            async with aiofiles.open(paths[i], "rb") as f:
                await f.read()

        return op, _noop

    def backend_impl(backend: str) -> Impl:
        async def impl() -> tuple[Op, Callable[[], Awaitable[None]]]:
            fs = open_fs(backend, root=d)

            async def op(i: int) -> None:
                await fs.read_file(names[i])

            return op, fs.aclose

        return impl

    impls: dict[str, Impl] = {"executor": executor_impl, "aiofiles": aiofiles_impl}
    impls.update({b: backend_impl(b) for b in backends})
    await run_scenario(
        {"scenario": "small_files_read", "cache": cache}, impls, depth, count, rounds, prepare
    )


async def commits(workdir: str, backends: list[str], count: int, depth: int, rounds: int) -> None:
    loop = asyncio.get_running_loop()
    payload = os.urandom(BLOCK)

    def fresh(name: str) -> str:
        d = os.path.join(workdir, name)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        return d

    async def executor_impl() -> tuple[Op, Callable[[], Awaitable[None]]]:
        pool = ThreadPoolExecutor(10)
        d = fresh("commit-executor")

        async def op(i: int) -> None:
            # The durable-create steps of mailbox.Maildir, one hand-off each.
            tmp, final = os.path.join(d, f".tmp{i}"), os.path.join(d, f"u.{i}")
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
            fd = await loop.run_in_executor(pool, os.open, tmp, flags, 0o600)
            await loop.run_in_executor(pool, os.write, fd, payload)
            await loop.run_in_executor(pool, os.fdatasync, fd)
            await loop.run_in_executor(pool, os.close, fd)
            await loop.run_in_executor(pool, os.link, tmp, final)
            await loop.run_in_executor(pool, os.unlink, tmp)
            dfd = await loop.run_in_executor(pool, os.open, d, os.O_RDONLY)
            await loop.run_in_executor(pool, os.fsync, dfd)
            await loop.run_in_executor(pool, os.close, dfd)

        async def teardown() -> None:
            pool.shutdown()

        return op, teardown

    async def aiofiles_impl() -> tuple[Op, Callable[[], Awaitable[None]]]:
        d = fresh("commit-aiofiles")

        async def op(i: int) -> None:
            tmp, final = os.path.join(d, f".tmp{i}"), os.path.join(d, f"u.{i}")
            async with aiofiles.open(tmp, "xb") as f:
                await f.write(payload)
                await f.flush()
                await loop.run_in_executor(None, os.fdatasync, f.fileno())
            await aiofiles.os.link(tmp, final)
            await aiofiles.os.remove(tmp)
            dfd = await loop.run_in_executor(None, os.open, d, os.O_RDONLY)
            await loop.run_in_executor(None, os.fsync, dfd)
            await loop.run_in_executor(None, os.close, dfd)

        return op, _noop

    def backend_impl(backend: str) -> Impl:
        async def impl() -> tuple[Op, Callable[[], Awaitable[None]]]:
            fs = open_fs(backend, root=fresh(f"commit-{backend}"), fsync="optimized")

            async def op(i: int) -> None:
                await fs.write_file(f"u.{i}", payload, CreateMode.FAIL_IF_EXISTS)

            return op, fs.aclose

        return impl

    impls: dict[str, Impl] = {"executor": executor_impl, "aiofiles": aiofiles_impl}
    impls.update({b: backend_impl(b) for b in backends})
    await run_scenario(
        {"scenario": "create_write_commit_fsync", "cache": "-"}, impls, depth, count, rounds, _noop
    )


def make_files(workdir: str, big_size: int, small_count: int) -> None:
    big = os.path.join(workdir, "big.bin")
    if not os.path.exists(big) or os.path.getsize(big) != big_size:
        with open(big, "wb") as f:
            chunk = os.urandom(1 << 20)
            for _ in range(big_size >> 20):
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
    d = os.path.join(workdir, "small")
    os.makedirs(d, exist_ok=True)
    rng = random.Random(1)
    for i in range(small_count):
        p = os.path.join(d, f"f{i}")
        if not os.path.exists(p):
            with open(p, "wb") as f:
                f.write(os.urandom(rng.randrange(2048, 12288)))
    os.sync()


async def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="smaller file and fewer operations")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per scenario")
    ap.add_argument("--dir", help="work directory (default: a temp dir under /var/tmp)")
    ap.add_argument("--backends", default="posix", help="comma-separated aiodbox backends")
    ap.add_argument("--only", default="randread,small,commit", help="scenarios to run")
    args = ap.parse_args()
    backends = args.backends.split(",")
    only = set(args.only.split(","))
    big_size = (256 << 20) if args.quick else (1 << 30)
    small_count = 500 if args.quick else 2000
    workdir = args.dir or tempfile.mkdtemp(prefix="aiodbox-fsbench-", dir="/var/tmp")
    os.makedirs(workdir, exist_ok=True)
    await asyncio.to_thread(make_files, workdir, big_size, small_count)
    r = args.rounds
    if "randread" in only:
        warm_ops = 5000 if args.quick else 20000
        cold_ops = 1000 if args.quick else 4000
        for depth in (1, 16, 64):
            await random_reads(workdir, backends, big_size, depth, warm_ops, "warm", r)
        for depth in (1, 16, 64):
            await random_reads(workdir, backends, big_size, depth, cold_ops, "cold", r)
    if "small" in only:
        await small_files(workdir, backends, small_count, 16, "warm", r)
        await small_files(workdir, backends, small_count, 16, "cold", r)
    if "commit" in only:
        await commits(workdir, backends, 100 if args.quick else 500, 16, r)
    if not args.dir:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
