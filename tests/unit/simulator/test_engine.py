"""The model backend simulator: its configured latencies are minimums, whatever the event loop does."""

from __future__ import annotations

import asyncio
import time

import uvloop

from schemas.config import SimulatorBackend
from simulator.engine import SimulatedModel


def test_time_to_first_token_is_never_shorter_than_configured_on_a_busy_uvloop() -> None:
    model = SimulatedModel(SimulatorBackend(ttft_ms=5, tokens_per_s=1000))

    async def first_token_after_a_busy_turn() -> float:
        await asyncio.sleep(0)  # a fresh loop turn: uvloop caches the loop's time here
        time.sleep(0.004)  # noqa: ASYNC251 - on purpose: a busy loop, its cached time 4 ms behind
        started = time.monotonic()
        async for _ in model.tokens(1):
            return (time.monotonic() - started) * 1000
        raise AssertionError("no token")

    waits = [uvloop.run(first_token_after_a_busy_turn()) for _ in range(20)]
    assert min(waits) >= 5.0, waits
