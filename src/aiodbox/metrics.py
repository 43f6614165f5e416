"""Process metrics: what the servers and the FS report, exposed as OpenMetrics when on.

The servers call the small functions below unconditionally; until :func:`enable` (or
:func:`enable_worker`) runs they only bump plain counters (cheap, and visible to tests
via :func:`snapshot`).  :func:`enable` creates the ``prometheus-client`` metrics and
serves them on 127.0.0.1 (or the configured address); it is off by default.

Several worker processes (``aiodbox serve --workers N``) use prometheus-client's
multiprocess mode: the parent sets ``PROMETHEUS_MULTIPROC_DIR`` (:func:`multiprocess_dir`)
before anything imports prometheus-client, each worker calls :func:`enable_worker`
(its values go to memory-mapped files in that directory), and the parent serves the sum
over all workers with :func:`serve_multiprocess`; :func:`process_dead` drops a finished
worker's live gauges.

FS numbers are pulled, not pushed: a periodic task in the server hands ``fs.stats()`` to
an :class:`FsStatsCollector`, which turns the cumulative counts of the ``stats`` layer
into counters (operations, errors, seconds) and the worker-pool numbers into gauges.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Mapping
from typing import Any

_lock = threading.Lock()
_counts: Counter[str] = Counter()
_prom: dict[str, Any] | None = None

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def _create() -> dict[str, Any]:
    from prometheus_client import Counter as PCounter
    from prometheus_client import Gauge, Histogram

    return {
        "connections": Gauge(
            "aiodbox_connections", "Open connections", ["protocol"], multiprocess_mode="livesum"
        ),
        "commands": Histogram(
            "aiodbox_command_seconds",
            "Command latency",
            ["protocol", "command", "result"],
            buckets=LATENCY_BUCKETS,
        ),
        "bytes": PCounter("aiodbox_bytes", "Bytes transferred", ["protocol", "direction"]),
        "fs_ops": Histogram(
            "aiodbox_fs_op_seconds",
            "FS operation latency",
            ["backend", "op"],
            buckets=LATENCY_BUCKETS,
        ),
        "fs_count": PCounter("aiodbox_fs_operations", "FS operations", ["backend", "op"]),
        "fs_errors": PCounter("aiodbox_fs_errors", "FS operations that failed", ["backend", "op"]),
        "fs_seconds": PCounter(
            "aiodbox_fs_operation_seconds", "Time spent in FS operations", ["backend", "op"]
        ),
        "fs_queue": Gauge(
            "aiodbox_fs_queue_depth",
            "Worker pool queue depth",
            ["backend"],
            multiprocess_mode="livesum",
        ),
        "fs_busy": Gauge(
            "aiodbox_fs_busy_threads",
            "Worker threads running an FS job",
            ["backend"],
            multiprocess_mode="livesum",
        ),
        "fs_threads": Gauge(
            "aiodbox_fs_threads", "Worker threads", ["backend"], multiprocess_mode="livesum"
        ),
        "prefetch": Gauge(
            "aiodbox_prefetch_in_flight",
            "Prefetch requests in flight",
            multiprocess_mode="livesum",
        ),
        "deliveries": PCounter("aiodbox_deliveries", "LMTP deliveries", ["result"]),
    }


def enable(host: str = "127.0.0.1", port: int = 0) -> int:
    """Create the metrics and serve them over HTTP; return the port (0 = any free one)."""
    global _prom
    from prometheus_client import start_http_server

    if _prom is None:
        _prom = _create()
    server, _thread = start_http_server(port, addr=host)
    return int(server.server_port)


def multiprocess_dir(path: str) -> None:
    """Put metrics of this process and its future children in ``path`` (multiprocess
    mode).  Call before prometheus-client is imported anywhere in the process."""
    os.environ[MULTIPROC_ENV] = path


def enable_worker() -> None:
    """Create the metrics in a worker process (values shared through the directory set
    by :func:`multiprocess_dir`); the parent serves them."""
    global _prom
    if _prom is None:
        _prom = _create()


def serve_multiprocess(host: str = "127.0.0.1", port: int = 0) -> int:
    """Serve the sum of every worker's metrics over HTTP; return the port."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return int(server.server_port)


def process_dead(pid: int) -> None:
    """A worker exited: forget its live gauges (multiprocess mode only)."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def enabled() -> bool:
    """True once :func:`enable` ran."""
    return _prom is not None


def connection(protocol: str, delta: int) -> None:
    """A connection opened (+1) or closed (-1)."""
    with _lock:
        _counts[f"{protocol}.connections"] += delta
    if _prom is not None:
        _prom["connections"].labels(protocol).inc(delta)


def command(protocol: str, name: str, seconds: float, result: str) -> None:
    """A command finished with ``result`` ("OK", "NO", "BAD", ...)."""
    with _lock:
        _counts[f"{protocol}.commands.{name}.{result}"] += 1
    if _prom is not None:
        _prom["commands"].labels(protocol, name, result).observe(seconds)


def transferred(protocol: str, direction: str, n: int) -> None:
    """``n`` bytes went ``in`` or ``out``."""
    with _lock:
        _counts[f"{protocol}.bytes.{direction}"] += n
    if _prom is not None:
        _prom["bytes"].labels(protocol, direction).inc(n)


def fs_operation(backend: str, op: str, seconds: float) -> None:
    """An FS operation took ``seconds``."""
    if _prom is not None:
        _prom["fs_ops"].labels(backend, op).observe(seconds)


def fs_queue_depth(backend: str, depth: int) -> None:
    """The worker pool queue depth of ``backend``."""
    with _lock:
        _counts[f"fs.{backend}.queue_depth"] = depth
    if _prom is not None:
        _prom["fs_queue"].labels(backend).set(depth)


def fs_pool(backend: str, *, queue_depth: int, busy: int, threads: int) -> None:
    """The worker pool of ``backend`` now: jobs waiting, threads working, threads."""
    fs_queue_depth(backend, queue_depth)
    if _prom is not None:
        _prom["fs_busy"].labels(backend).set(busy)
        _prom["fs_threads"].labels(backend).set(threads)


def fs_operations(backend: str, op: str, count: int, errors: int, seconds: float) -> None:
    """``count`` more ``op`` operations on ``backend`` (``errors`` of them failed) took
    ``seconds`` together."""
    with _lock:
        _counts[f"fs.{backend}.{op}"] += count
    if _prom is not None and count:
        _prom["fs_count"].labels(backend, op).inc(count)
        _prom["fs_seconds"].labels(backend, op).inc(max(seconds, 0.0))
        if errors:
            _prom["fs_errors"].labels(backend, op).inc(errors)


class FsStatsCollector:
    """Turns ``FS.stats()`` snapshots into metrics (see the module docstring).

    Args:
        backend: the label for this FS (e.g. ``"posix"``, ``"latency:posix"``).
    """

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self._seen: dict[str, tuple[int, int, float]] = {}

    def collect(self, stats: Mapping[str, Any]) -> None:
        """Record what changed since the previous snapshot."""
        layer = stats.get("stats")
        if isinstance(layer, Mapping):
            for op, row in dict(layer.get("ops", {})).items():
                count = int(row.get("count", 0))
                errors = int(row.get("errors", 0))
                total = float(row.get("mean_ms", 0.0)) * count / 1000.0
                old = self._seen.get(op, (0, 0, 0.0))
                self._seen[op] = (count, errors, total)
                if count > old[0]:
                    fs_operations(self.backend, op, count - old[0], errors - old[1], total - old[2])
        pool = _find(stats, "queue_depth")
        if pool is not None:
            fs_pool(
                self.backend,
                queue_depth=int(pool.get("queue_depth", 0)),
                busy=int(pool.get("busy", 0)),
                threads=int(pool.get("threads", 0)),
            )


def _find(tree: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    """The first mapping in ``tree`` (depth first) that has ``key``."""
    if key in tree:
        return tree
    for value in tree.values():
        if isinstance(value, Mapping):
            found = _find(value, key)
            if found is not None:
                return found
    return None


def prefetch_in_flight(delta: int) -> None:
    """Prefetch requests started (+) or finished (-)."""
    with _lock:
        _counts["prefetch.in_flight"] += delta
    if _prom is not None:
        _prom["prefetch"].inc(delta)


def delivery(result: str) -> None:
    """An LMTP delivery to one recipient ended with ``result`` ("ok", "tempfail", ...)."""
    with _lock:
        _counts[f"lmtp.deliveries.{result}"] += 1
    if _prom is not None:
        _prom["deliveries"].labels(result).inc()


def snapshot() -> dict[str, int]:
    """The plain counters (tests read these)."""
    with _lock:
        return dict(_counts)
