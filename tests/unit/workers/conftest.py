"""Fixtures of the worker tests: a real nats-server's work-queue stream with affinity buckets."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from dispatcher.bus.bus_settings import BusSettings
from dispatcher.bus.subjects import Subjects
from dispatcher.bus.topology import ensure_affinity_consumers, ensure_consumer, ensure_streams
from modelbus.embedded_nats import NatsServer
from tests.support.servers import small_streams
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
async def affinity_bus(nats_server: NatsServer) -> AsyncIterator[AffinityBus]:
    nc = await nats.connect(nats_server.url)
    subjects = Subjects("t" + uuid.uuid4().hex[:10])
    settings = BusSettings(
        nats_url=nats_server.url, namespace=subjects.namespace, ack_wait_s=5, **small_streams()
    )
    js = nc.jetstream()
    await ensure_streams(js, subjects, settings, nc.max_payload, msg_ttl=True)
    fifo = await ensure_consumer(js, subjects, settings, "m")
    buckets = await ensure_affinity_consumers(js, subjects, settings, "m", "default", BUCKETS)
    yield AffinityBus(nc, subjects, fifo, buckets)
    await nc.close()


async def _until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)
