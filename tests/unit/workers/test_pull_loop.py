"""The capacity puller against a real nats-server: bounded in flight, credits come back."""

from __future__ import annotations

import asyncio
import random
import time

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from dispatcher.bus.subjects import Subjects
from dispatcher.bus.topology import ensure_consumer
from tests.unit.conftest import Bus
from workers.pull_loop import CapacityPuller


@pytest.fixture
async def bus(bus: Bus) -> tuple[NATS, Subjects, str]:
    """The shared fixture's streams with the interactive lane's consumer of model `m`."""
    consumer = await ensure_consumer(bus.js, bus.subjects, bus.settings, "m")
    return bus.nc, bus.subjects, consumer


async def _publish(nc: NATS, subjects: Subjects, count: int) -> None:
    js = nc.jetstream()
    for n in range(count):
        await js.publish(subjects.request("m"), str(n).encode())


async def test_puller_never_holds_more_than_its_capacity(bus: tuple[NATS, Subjects, str]) -> None:
    nc, subjects, consumer = bus
    active = 0
    peak = 0
    done: list[str] = []

    async def handler(msg: Msg) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(random.uniform(0, 0.02))
        active -= 1
        done.append(msg.data.decode())
        await msg.ack()

    puller = CapacityPuller(nc, subjects.request_stream, consumer, 3, handler)
    task = asyncio.create_task(puller.run())
    await _publish(nc, subjects, 60)
    deadline = time.monotonic() + 10
    while len(done) < 60 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    puller.stop()
    await task
    assert sorted(done, key=int) == [str(n) for n in range(60)]
    assert peak == 3  # used its capacity ...
    assert puller.max_in_flight == 3  # ... and never more
    info = await nc.jetstream().consumer_info(subjects.request_stream, consumer)
    assert info.num_ack_pending == 0 and info.num_pending == 0


async def test_expired_pull_requests_give_their_slots_back(bus: tuple[NATS, Subjects, str]) -> None:
    nc, subjects, consumer = bus
    done: list[float] = []

    async def handler(msg: Msg) -> None:
        done.append(time.monotonic())
        await msg.ack()

    puller = CapacityPuller(nc, subjects.request_stream, consumer, 2, handler, pull_expires_s=0.3)
    task = asyncio.create_task(puller.run())
    await asyncio.sleep(1.2)  # several pull requests expire with a 408 in the meantime
    assert puller.owed <= 2
    published = time.monotonic()
    await _publish(nc, subjects, 2)
    while len(done) < 2 and time.monotonic() - published < 3:
        await asyncio.sleep(0.01)
    puller.stop()
    await task
    assert len(done) == 2
    assert max(done) - published < 0.5  # served by outstanding pulls, not after another expiry


async def test_stop_waits_for_in_flight_work(bus: tuple[NATS, Subjects, str]) -> None:
    nc, subjects, consumer = bus
    finished: list[str] = []

    async def handler(msg: Msg) -> None:
        await asyncio.sleep(0.3)
        finished.append(msg.data.decode())
        await msg.ack()

    puller = CapacityPuller(nc, subjects.request_stream, consumer, 4, handler)
    task = asyncio.create_task(puller.run())
    await _publish(nc, subjects, 2)
    while puller.in_flight < 2:
        await asyncio.sleep(0.01)
    puller.stop()
    await task
    assert sorted(finished) == ["0", "1"]
