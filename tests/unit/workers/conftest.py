"""Fixtures of the worker tests: a real nats-server's work-queue stream with affinity buckets."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from dispatcher.bus.subjects import Subjects
from dispatcher.bus.topology import ensure_affinity_consumers, ensure_consumer
from tests.unit.conftest import Bus
from workers.affinity_puller import AffinityPuller

BUCKETS = 4


class AffinityBus:
    def __init__(self, nc: NATS, subjects: Subjects, fifo: str, buckets: list[str]) -> None:
        self.nc, self.subjects, self.fifo, self.buckets = nc, subjects, fifo, buckets

    async def publish(self, bucket: int, body: str, ring: bool = True) -> None:
        await self.nc.jetstream().publish(
            self.subjects.affinity_request("m", "default", bucket), body.encode()
        )
        if ring:
            await self.nc.publish(self.subjects.affinity_bell("m", "default", bucket), b"")

    def puller(self, capacity: int, handler: Callable[[Msg], object], **options: float) -> AffinityPuller:
        async def run(msg: Msg) -> None:
            await handler(msg)  # type: ignore[misc]

        return AffinityPuller(
            self.nc,
            self.subjects.request_stream,
            self.fifo,
            self.buckets,
            self.subjects.affinity_bells("m", "default"),
            capacity,
            run,
            **options,  # type: ignore[arg-type]
        )


@pytest.fixture
async def affinity_bus(bus: Bus) -> AffinityBus:
    """The request streams of a fresh namespace with a FIFO consumer and BUCKETS bucket consumers."""
    fifo = await ensure_consumer(bus.js, bus.subjects, bus.settings, "m")
    buckets = await ensure_affinity_consumers(bus.js, bus.subjects, bus.settings, "m", "default", BUCKETS)
    return AffinityBus(bus.nc, bus.subjects, fifo, buckets)


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)
