"""Quick numbers: the io_uring engine against a 10-thread executor, in the same run.

Prints one JSON line per measurement, each with both engines' ops/s and their ratio
(uring / threads), plus the worst lateness of a 5 ms timer running alongside:

* ``random_read_4k_cached``: 4 KiB ``pread`` at random aligned offsets of a 256 MiB file
  that is in the page cache, 64 in flight.
* ``random_read_4k_cold``: the same after ``POSIX_FADV_DONTNEED`` on the file (no root
  needed), fewer operations.
* ``small_file_open_read_close``: open + read + close of 2000 small files (1-16 KiB), 16
  in flight.  The executor runs open/read/close as one job (``thread_hops=1``, what the
  posix backend does) or as three (``thread_hops=3``, a naive async file wrapper).
  Reported for the direct-descriptor chain (one submission per file) and the
  two-submission fallback.

The baseline is ``loop.run_in_executor(ThreadPoolExecutor(10), ...)``.  Each figure is the
median of ``--repeat`` alternating runs.  Compare ratios, never absolute numbers across
machines.  Usage: ``python bench/uring_probe.py [--dir DIR] [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

from aiodbox.fs.backends.uring_engine import UringEngine, probe

BLOCK = 4096


class Ticker:
    """A 5 ms timer that records how late it fires, to show loop responsiveness."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            start = loop.time()
            await asyncio.sleep(0.005)
            self.worst = max(self.worst, loop.time() - start - 0.005)

    def __enter__(self) -> Ticker:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    async def wait(self) -> None:
        if self._task is not None:
            await self._task


Result = tuple[float, float, float]  # ops/s, worst timer lateness (s), CPU s per op


async def timed(
    jobs: Iterator[Callable[[], Awaitable[object]]], in_flight: int, count: int
) -> Result:
    """Run ``count`` jobs with ``in_flight`` workers and measure them.

    CPU time is the whole process's (event loop and worker threads alike), which also
    makes the comparison meaningful on a machine shared with other work.
    """

    async def worker() -> None:
        for job in jobs:
            await job()

    ticker = Ticker()
    with ticker:
        start, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker() for _ in range(in_flight)))
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    await ticker.wait()
    return count / elapsed, ticker.worst, cpu / count


def make_big_file(path: Path, size: int) -> None:
    chunk = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for _ in range(size // len(chunk)):
            f.write(chunk)
    with open(path, "rb") as f:  # make sure it is all in the page cache
        while f.read(1 << 22):
            pass


def make_small_files(directory: Path, count: int, rng: random.Random) -> list[str]:
    directory.mkdir()
    paths = []
    for i in range(count):
        path = directory / f"u.{i}"
        path.write_bytes(rng.randbytes(rng.randint(1024, 16 * 1024)))
        paths.append(str(path))
    return paths


def read_whole(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 65536)
    finally:
        os.close(fd)


def emit(name: str, uring: list[Result], threads: list[Result], **extra: object) -> None:
    u = statistics.median(r for r, _, _ in uring)
    t = statistics.median(r for r, _, _ in threads)
    print(
        json.dumps(
            {
                "bench": name,
                **extra,
                "uring_ops_s": round(u),
                "threads_ops_s": round(t),
                "ratio": round(u / t, 2),
                "uring_cpu_us_per_op": round(statistics.median(c for *_, c in uring) * 1e6, 1),
                "threads_cpu_us_per_op": round(statistics.median(c for *_, c in threads) * 1e6, 1),
                "uring_worst_lateness_ms": round(max(w for _, w, _ in uring) * 1000, 2),
                "threads_worst_lateness_ms": round(max(w for _, w, _ in threads) * 1000, 2),
                "load_avg_1m": round(os.getloadavg()[0], 2),
            }
        ),
        flush=True,
    )


async def bench_reads(
    engine: UringEngine, pool: ThreadPoolExecutor, path: Path, ops: int, repeat: int,
    cold: bool,
) -> tuple[list[Result], list[Result]]:  # fmt: skip
    loop = asyncio.get_running_loop()
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    blocks = os.fstat(fd).st_size // BLOCK
    rng = random.Random(42)
    uring: list[Result] = []
    threads: list[Result] = []
    jobs: Iterator[Callable[[], Awaitable[object]]]
    try:
        for _ in range(repeat):
            for kind in ("uring", "threads"):
                offsets = [rng.randrange(blocks) * BLOCK for _ in range(ops)]
                if cold:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                if kind == "uring":
                    jobs = (partial(engine.read, fd, BLOCK, off) for off in offsets)
                    uring.append(await timed(jobs, 64, ops))
                else:
                    jobs = (
                        partial(loop.run_in_executor, pool, os.pread, fd, BLOCK, off)
                        for off in offsets
                    )
                    threads.append(await timed(jobs, 64, ops))
    finally:
        os.close(fd)
    return uring, threads


async def three_hops(pool: ThreadPoolExecutor, path: str) -> bytes:
    """open, read and close as three executor jobs (a naive async file wrapper)."""
    loop = asyncio.get_running_loop()
    fd = await loop.run_in_executor(pool, os.open, path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return await loop.run_in_executor(pool, os.read, fd, 65536)
    finally:
        await loop.run_in_executor(pool, os.close, fd)


async def bench_small_files(
    engine: UringEngine, pool: ThreadPoolExecutor, paths: list[str], repeat: int, hops: int
) -> tuple[list[Result], list[Result]]:
    loop = asyncio.get_running_loop()
    uring: list[Result] = []
    threads: list[Result] = []
    jobs: Iterator[Callable[[], Awaitable[object]]]
    for _ in range(repeat):
        jobs = (partial(engine.open_read_close, p, 65536) for p in paths)
        uring.append(await timed(jobs, 16, len(paths)))
        if hops == 1:
            jobs = (partial(loop.run_in_executor, pool, read_whole, p) for p in paths)
        else:
            jobs = (partial(three_hops, pool, p) for p in paths)
        threads.append(await timed(jobs, 16, len(paths)))
    return uring, threads


async def main(args: argparse.Namespace) -> None:
    reason = probe()
    if reason is not None:
        print(json.dumps({"bench": "uring_probe", "skipped": reason}))
        return
    base = Path(tempfile.mkdtemp(prefix="uring-bench-", dir=args.dir))
    size = (16 if args.quick else 256) << 20
    reads = 20_000 if args.quick else 100_000
    files = 500 if args.quick else 2000
    rng = random.Random(1)
    big = base / "big"
    make_big_file(big, size)
    paths = make_small_files(base / "small", files, rng)
    pool = ThreadPoolExecutor(10)
    engine = UringEngine(256)
    fallback = UringEngine(256, direct_descriptors=False)
    try:
        u, t = await bench_reads(engine, pool, big, reads, args.repeat, cold=False)
        emit("random_read_4k_cached", u, t, in_flight=64, file_mib=size >> 20, ops=reads)
        cold_ops = reads // 10
        u, t = await bench_reads(engine, pool, big, cold_ops, args.repeat, cold=True)
        emit("random_read_4k_cold", u, t, in_flight=64, file_mib=size >> 20, ops=cold_ops)
        for eng in (engine, fallback):
            for hops in (1, 3):
                u, t = await bench_small_files(eng, pool, paths, args.repeat, hops)
                emit("small_file_open_read_close", u, t, in_flight=16, files=files,
                     direct_descriptors=eng.direct_descriptors, thread_hops=hops)  # fmt: skip
    finally:
        await engine.aclose()
        await fallback.aclose()
        pool.shutdown()
        for p in paths:
            os.unlink(p)
        (base / "small").rmdir()
        big.unlink()
        base.rmdir()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=None, help="where to put the test files")
    parser.add_argument("--quick", action="store_true", help="16 MiB, fewer operations")
    parser.add_argument("--repeat", type=int, default=3, help="alternating runs per figure")
    asyncio.run(main(parser.parse_args()))
