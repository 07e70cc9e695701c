"""The per-destination circuit breaker and slots."""

from __future__ import annotations

import asyncio
import time

from dispatcher.webhooks.breaker import CircuitBreaker, DestinationSlots


def test_circuit_opens_after_failures_then_lets_one_probe_through() -> None:
    breaker = CircuitBreaker(failures=3, cooldown_s=0.2)
    for _ in range(3):
        assert breaker.allow("a")
        breaker.failed("a")
    assert not breaker.allow("a") and breaker.allow("b")  # other destinations unaffected
    time.sleep(0.25)
    assert breaker.allow("a")  # the probe
    assert not breaker.allow("a")  # only one
    breaker.failed("a")
    assert not breaker.allow("a")  # reopened
    time.sleep(0.25)
    assert breaker.allow("a")
    breaker.succeeded("a")
    assert breaker.allow("a") and breaker.allow("a")


async def test_slots_bound_attempts_per_destination() -> None:
    slots = DestinationSlots(2)
    inside = {"a": 0, "b": 0}
    peak = {"a": 0, "b": 0}

    async def use(destination: str) -> None:
        async with slots.hold(destination):
            inside[destination] += 1
            peak[destination] = max(peak[destination], inside[destination])
            await asyncio.sleep(0.01)
            inside[destination] -= 1

    await asyncio.gather(*(use("a") for _ in range(10)), *(use("b") for _ in range(3)))
    assert peak == {"a": 2, "b": 2}
    assert slots._slots == {}  # idle destinations are forgotten
