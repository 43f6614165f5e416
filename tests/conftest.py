"""Project-wide test fixtures.

Theory of operation: every asyncio test runs on a loop in debug mode whose
``slow_callback_duration`` is 50 ms.  asyncio then logs "Executing <callback> took N
seconds" for any callback (including a coroutine step) that held the loop longer than
that.  ``_fail_on_blocking_callbacks`` collects those records and fails the test, so
blocking I/O (a file read, an SQLite call, an fsync) hidden inside a coroutine is caught
wherever it happens in the project.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

SLOW_CALLBACK_SECONDS = 0.05


def _find_fixtures() -> Path:
    """``../shared/fixtures`` next to the checkout (or next to one of its parents, for a
    clone made elsewhere); ``$AIODBOX_FIXTURES`` wins; /work/shared/fixtures last."""
    override = os.environ.get("AIODBOX_FIXTURES")
    if override:
        return Path(override)
    repo = Path(__file__).resolve().parents[1]
    for parent in repo.parents:
        candidate = parent / "shared" / "fixtures"
        if (candidate / "dovecot-2.3" / "manifest.json").is_file():
            return candidate
    return Path("/work/shared/fixtures")


FIXTURES = _find_fixtures()

# Blocking clients (imaplib, smtplib) run in threads beside the loop in many tests; a
# shorter GIL switch interval keeps them from holding the loop thread off for 5 ms at a
# time, which the 50 ms guard would otherwise count against the loop.
sys.setswitchinterval(0.001)


def _debug_loop() -> asyncio.AbstractEventLoop:
    loop = asyncio.new_event_loop()
    loop.set_debug(True)
    loop.slow_callback_duration = SLOW_CALLBACK_SECONDS
    return loop


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    return {"debug": _debug_loop}


class _SlowCallbackCollector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("Executing "):
            self.records.append(record)


@pytest.fixture(autouse=True)
def _fail_on_blocking_callbacks(request: pytest.FixtureRequest) -> Iterator[None]:
    # Objects that exist before the test (modules, fixtures' data) are moved out of the
    # collector's reach: a full GC pass over the whole test process can take tens of
    # milliseconds on a loaded machine and would be blamed on whichever callback it hit.
    gc.freeze()
    collector = _SlowCallbackCollector()
    log = logging.getLogger("asyncio")
    log.addHandler(collector)
    try:
        yield
    finally:
        log.removeHandler(collector)
    if collector.records and request.node.get_closest_marker("allow_slow_callbacks") is None:
        lines = "\n".join(r.getMessage() for r in collector.records[:5])
        pytest.fail(f"an event-loop callback blocked for more than 50 ms:\n{lines}")


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """The real Dovecot 2.3 fixtures in ../shared/fixtures (read, never copied)."""
    if not FIXTURES.is_dir():
        pytest.fail(f"the shared fixtures are missing: {FIXTURES}")
    return FIXTURES
