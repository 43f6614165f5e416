"""Process metrics: what the servers and the FS report, exposed as OpenMetrics when on.

The servers call the small functions below unconditionally; until :func:`enable` runs
they only bump plain counters (cheap, and visible to tests via :func:`snapshot`).
:func:`enable` creates the ``prometheus-client`` metrics and serves them on 127.0.0.1
(or the configured address); it is off by default.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

_lock = threading.Lock()
_counts: Counter[str] = Counter()
_prom: dict[str, Any] | None = None

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


def enable(host: str = "127.0.0.1", port: int = 0) -> int:
    """Create the metrics and serve them over HTTP; return the port (0 = any free one)."""
    global _prom
    from prometheus_client import Counter as PCounter
    from prometheus_client import Gauge, Histogram, start_http_server

    if _prom is None:
        _prom = {
            "connections": Gauge("aiodbox_connections", "Open connections", ["protocol"]),
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
            "fs_queue": Gauge("aiodbox_fs_queue_depth", "Worker pool queue depth", ["backend"]),
            "prefetch": Gauge("aiodbox_prefetch_in_flight", "Prefetch requests in flight"),
            "deliveries": PCounter("aiodbox_deliveries", "LMTP deliveries", ["result"]),
        }
    server, _thread = start_http_server(port, addr=host)
    return int(server.server_port)


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
    if _prom is not None:
        _prom["fs_queue"].labels(backend).set(depth)


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
