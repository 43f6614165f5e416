"""The worker pool: results, errors, batching, shutdown."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from aiodbox.fs.backends.workers import WorkerPool


async def test_results_and_errors_reach_the_caller() -> None:
    pool = WorkerPool(2)
    assert await pool.submit(lambda a, b: a + b, 2, 3) == 5

    def boom() -> None:
        raise OSError(5, "io")

    with pytest.raises(OSError):
        await pool.submit(boom)
    pool.shutdown()


async def test_jobs_run_off_the_loop_thread_in_parallel() -> None:
    pool = WorkerPool(4)
    loop_thread = threading.get_ident()
    start = time.perf_counter()
    idents = await asyncio.gather(
        *(pool.submit(lambda: (time.sleep(0.1), threading.get_ident())[1]) for _ in range(4))
    )
    elapsed = time.perf_counter() - start
    assert loop_thread not in idents
    assert len(set(idents)) == 4
    assert elapsed < 0.35  # four 100 ms jobs overlapped
    pool.shutdown()


async def test_many_completions_one_wakeup_per_batch() -> None:
    pool = WorkerPool(8)
    gate = threading.Event()
    futs = [pool.submit(gate.wait) for _ in range(8)]
    await asyncio.sleep(0.05)
    assert pool.stats()["busy"] == 8
    gate.set()
    await asyncio.gather(*futs)
    assert pool.stats()["wakeups"] < 8
    pool.shutdown()


async def test_cancelled_waiter_does_not_break_the_pool() -> None:
    pool = WorkerPool(1)
    fut = pool.submit(time.sleep, 0.02)
    fut.cancel()
    assert await pool.submit(lambda: 7) == 7
    pool.shutdown()
    with pytest.raises(RuntimeError):
        pool.submit(lambda: 1)
