"""Per-destination limits for webhook delivery: how many at once, and a circuit breaker.

A destination (scheme://host:port) that keeps failing costs every waiting delivery a full timeout;
after `failures` failures in a row its circuit opens and deliveries to it fail at once (recorded
as `circuit open`, retried later) until `cooldown_s` has passed; then one probe goes through, and
its outcome closes or reopens the circuit. Other destinations are not affected either way.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass


@dataclass(slots=True)
class _Circuit:
    failures: int = 0
    open_until: float = 0.0
    probing: bool = False


class CircuitBreaker:
    def __init__(self, failures: int = 5, cooldown_s: float = 30.0) -> None:
        self._threshold = failures
        self._cooldown_s = cooldown_s
        self._circuits: dict[str, _Circuit] = {}

    def allow(self, destination: str) -> bool:
        """May an attempt go to `destination` now? In the half-open state, only one (the probe)."""
        circuit = self._circuits.get(destination)
        if circuit is None or circuit.failures < self._threshold:
            return True
        if time.monotonic() < circuit.open_until or circuit.probing:
            return False
        circuit.probing = True
        return True

    def is_open(self, destination: str) -> bool:
        circuit = self._circuits.get(destination)
        return circuit is not None and circuit.failures >= self._threshold

    def succeeded(self, destination: str) -> None:
        self._circuits.pop(destination, None)  # only failing destinations are remembered

    def failed(self, destination: str) -> None:
        circuit = self._circuits.setdefault(destination, _Circuit())
        circuit.failures += 1
        circuit.probing = False
        if circuit.failures >= self._threshold:
            circuit.open_until = time.monotonic() + self._cooldown_s


class DestinationSlots:
    """At most `limit` attempts in flight per destination; idle destinations are forgotten."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._slots: dict[str, tuple[asyncio.Semaphore, int]] = {}

    @asynccontextmanager
    async def hold(self, destination: str) -> AsyncIterator[None]:
        semaphore, users = self._slots.get(destination, (asyncio.Semaphore(self._limit), 0))
        self._slots[destination] = (semaphore, users + 1)
        try:
            async with semaphore:
                yield
        finally:
            semaphore, users = self._slots[destination]
            if users <= 1:
                del self._slots[destination]
            else:
                self._slots[destination] = (semaphore, users - 1)
