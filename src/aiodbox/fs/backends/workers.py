"""A pool of worker threads whose completions reach the event loop in batches.

Theory of operation
-------------------
``submit(fn, *args)`` queues a job and returns an asyncio future.  ``io_threads`` daemon
threads take jobs from one queue and run them; each job is a *whole* operation (open +
read + close, write + fsync + link + directory fsync), so a file operation costs one hand
-off, not one per system call.  A finished job goes on a done-deque; only the first job
finished since the loop last drained the deque wakes the loop (``call_soon_threadsafe``),
and the drain resolves every finished future at once: one wake-up per batch, however many
jobs completed meanwhile.

The pool belongs to the loop that first submits to it.  ``stats()`` reports the queue
depth, busy threads, jobs done and wake-ups, so batching is observable.
"""

from __future__ import annotations

import asyncio
import collections
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class _Job:
    __slots__ = ("args", "error", "fn", "future", "result")

    def __init__(
        self, fn: Callable[..., Any], args: tuple[Any, ...], future: asyncio.Future[Any]
    ) -> None:
        self.fn = fn
        self.args = args
        self.future = future
        self.result: Any = None
        self.error: BaseException | None = None


def _no_fn() -> None:
    return None


class WorkerPool:
    """Run blocking functions on ``threads`` worker threads; see the module docstring."""

    def __init__(self, threads: int = 10, name: str = "aiodbox-io") -> None:
        if threads < 1:
            raise ValueError("io_threads must be at least 1")
        self.size = threads
        self._name = name
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._done: collections.deque[_Job] = collections.deque()
        self._lock = threading.Lock()
        self._wake_pending = False
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self.submitted = 0
        self.started = 0
        self.completed = 0
        self.wakeups = 0

    def submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Queue ``fn(*args)``; the future resolves on the loop with its result or error."""
        if self._closed:
            raise RuntimeError("worker pool is closed")
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise RuntimeError("worker pool used from a second event loop")
        future: asyncio.Future[T] = loop.create_future()
        self.submitted += 1
        self._queue.put(_Job(fn, args, future))
        if len(self._threads) < self.size and self.submitted - self.started > 0:
            self._spawn()
        return future

    def _spawn(self) -> None:
        t = threading.Thread(
            target=self._worker, name=f"{self._name}-{len(self._threads)}", daemon=True
        )
        self._threads.append(t)
        t.start()

    def _worker(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            with self._lock:
                self.started += 1
            try:
                job.result = job.fn(*job.args)
            except BaseException as e:  # delivered to the awaiting coroutine
                job.error = e
            self._finished(job)

    def complete(self, future: asyncio.Future[T], result: T, error: BaseException | None) -> None:
        """Resolve ``future`` on the loop, batched like jobs (called from a worker thread).

        For a job that runs several pieces of work and reports each as it finishes.
        """
        job = _Job(_no_fn, (), future)
        job.result = result
        job.error = error
        self._finished(job)

    def _finished(self, job: _Job) -> None:
        self._done.append(job)
        with self._lock:
            wake = not self._wake_pending
            self._wake_pending = True
        if wake:
            loop = self._loop
            if loop is not None and not loop.is_closed():
                try:
                    loop.call_soon_threadsafe(self._drain)
                except RuntimeError:  # loop closed meanwhile: nobody is waiting
                    pass

    def _drain(self) -> None:
        with self._lock:
            self._wake_pending = False
        self.wakeups += 1
        done = self._done
        while done:
            job = done.popleft()
            if job.fn is not _no_fn:  # not a complete() report: that counts as no job
                self.completed += 1
            fut = job.future
            if fut.cancelled():
                continue
            if job.error is not None:
                fut.set_exception(job.error)
            else:
                fut.set_result(job.result)

    @property
    def closed(self) -> bool:
        """True after :meth:`shutdown`."""
        return self._closed

    def stats(self) -> dict[str, int]:
        """Queue depth, busy threads and counters (read on the loop thread)."""
        with self._lock:
            started = self.started
        return {
            "threads": len(self._threads),
            "queue_depth": self.submitted - started,
            "busy": started - self.completed - len(self._done),
            "submitted": self.submitted,
            "completed": self.completed,
            "wakeups": self.wakeups,
        }

    def shutdown(self) -> None:
        """Stop the threads after the queued jobs ran; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for _ in self._threads:
            self._queue.put(None)
