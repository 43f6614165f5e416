"""The loop guard itself: a blocking coroutine step must be reported."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest


async def test_loop_runs_in_debug_mode_with_50ms_threshold() -> None:
    loop = asyncio.get_running_loop()
    assert loop.get_debug()
    assert loop.slow_callback_duration == pytest.approx(0.05)


@pytest.mark.allow_slow_callbacks
async def test_blocking_step_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="asyncio")

    async def blocker() -> None:
        time.sleep(0.08)  # deliberately blocks the loop

    await asyncio.create_task(blocker())
    await asyncio.sleep(0)
    assert any(r.getMessage().startswith("Executing ") for r in caplog.records)
