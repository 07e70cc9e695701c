"""workers/pull_loop.py beyond tests/unit/workers/test_pull_loop.py: the invariant of its docstring
(in flight + owed <= capacity at every moment), the batch lane's share and priority, a failing
handler, and cancellation during the drain; on a real nats-server."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import pytest
from nats.aio.msg import Msg

from dispatcher.bus.topology import ensure_consumer
from schemas.envelope import Lane
from tests.unit.conftest import Bus
from workers.pull_loop import CapacityPuller


async def _publish(bus: Bus, count: int, lane: Lane = Lane.INTERACTIVE, tag: str = "") -> None:
    for n in range(count):
        await bus.js.publish(bus.subjects.request("m", "default", lane), f"{tag}{n}".encode())


async def _until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.005)


async def _consumers(bus: Bus) -> tuple[str, str]:
    interactive = await ensure_consumer(bus.js, bus.subjects, bus.settings, "m")
    batch = await ensure_consumer(bus.js, bus.subjects, bus.settings, "m", lane=Lane.BATCH)
    return interactive, batch


async def test_in_flight_plus_owed_never_exceeds_capacity(bus: Bus) -> None:
    interactive, batch = await _consumers(bus)
    capacity = 3
    violations: list[tuple[int, int]] = []
    done: list[bytes] = []
    puller: CapacityPuller

    def check() -> None:
        if puller.in_flight + puller.owed > capacity:
            violations.append((puller.in_flight, puller.owed))

    async def handler(msg: Msg) -> None:
        check()
        await asyncio.sleep(random.uniform(0, 0.01))
        check()
        done.append(msg.data)
        await msg.ack()

    async def sample() -> None:
        while True:
            check()
            await asyncio.sleep(0.001)

    puller = CapacityPuller(
        bus.nc, bus.subjects.request_stream, interactive, capacity, handler, 0.2, batch_consumer=batch
    )
    running = asyncio.ensure_future(puller.run())
    sampling = asyncio.ensure_future(sample())
    # Both lanes, arriving while the puller is busy and while it is idle with pulls expiring.
    await _publish(bus, 40, tag="i")
    await _publish(bus, 20, Lane.BATCH, tag="b")
    await _until(lambda: len(done) == 60)
    await asyncio.sleep(0.5)  # idle: pull requests expire and are renewed
    await _publish(bus, 20, tag="j")
    await _until(lambda: len(done) == 80)
    puller.stop()
    await running
    sampling.cancel()
    assert violations == []
    assert puller.max_in_flight == capacity
    assert len(set(done)) == 80


async def test_the_batch_lane_never_takes_more_than_its_share(bus: Bus) -> None:
    interactive, batch = await _consumers(bus)
    release = asyncio.Event()
    batch_peak = 0
    running_batch = 0

    async def handler(msg: Msg) -> None:
        nonlocal batch_peak, running_batch
        running_batch += 1
        batch_peak = max(batch_peak, running_batch)
        await release.wait()
        running_batch -= 1
        await msg.ack()

    puller = CapacityPuller(
        bus.nc,
        bus.subjects.request_stream,
        interactive,
        4,
        handler,
        0.2,
        batch_consumer=batch,
        batch_share=0.5,
    )
    running = asyncio.ensure_future(puller.run())
    await _publish(bus, 10, Lane.BATCH)
    await _until(lambda: puller.in_flight_batch == 2)
    await asyncio.sleep(0.5)  # several pull rounds: still only its share
    assert batch_peak == 2 and puller.in_flight == 2
    release.set()
    await _until(lambda: puller.received == 10)
    puller.stop()
    await running
    assert batch_peak == 2


async def test_interactive_work_is_taken_before_waiting_batch_work(bus: Bus) -> None:
    interactive, batch = await _consumers(bus)
    order: list[str] = []

    async def handler(msg: Msg) -> None:
        order.append(msg.data.decode()[0])
        await asyncio.sleep(0.005)
        await msg.ack()

    # Both queues full before the puller starts: interactive drains first.
    await _publish(bus, 12, Lane.BATCH, tag="b")
    await _publish(bus, 12, tag="i")
    puller = CapacityPuller(
        bus.nc, bus.subjects.request_stream, interactive, 2, handler, 0.2, batch_consumer=batch
    )
    running = asyncio.ensure_future(puller.run())
    await _until(lambda: len(order) == 24)
    puller.stop()
    await running
    assert order[:12] == ["i"] * 12


async def test_a_failing_handler_gives_its_slot_back(bus: Bus) -> None:
    interactive, _ = await _consumers(bus)
    handled: list[bytes] = []

    async def handler(msg: Msg) -> None:
        handled.append(msg.data)
        await msg.ack()
        raise RuntimeError("handler bug")

    puller = CapacityPuller(bus.nc, bus.subjects.request_stream, interactive, 1, handler, 0.2)
    running = asyncio.ensure_future(puller.run())
    await _publish(bus, 5)
    await _until(lambda: len(handled) == 5)  # capacity 1: each needed the previous slot back
    puller.stop()
    await running
    assert puller.in_flight == 0


async def test_cancelling_the_drain_cancels_and_still_awaits_the_handlers(bus: Bus) -> None:
    interactive, _ = await _consumers(bus)
    started = asyncio.Event()
    finished_cleanup: list[bool] = []

    async def handler(msg: Msg) -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        finally:
            await asyncio.sleep(0.05)  # cleanup that must run before run() returns
            finished_cleanup.append(True)

    puller = CapacityPuller(bus.nc, bus.subjects.request_stream, interactive, 2, handler, 0.2)
    running: asyncio.Future[None] = asyncio.ensure_future(puller.run())
    await _publish(bus, 1)
    await asyncio.wait_for(started.wait(), 5)
    puller.stop()
    # run() unsubscribes its pull inbox, then (with no await between) waits for its handlers.
    await _until(lambda: not any(sub.subject.startswith(puller._inbox) for sub in bus.nc._subs.values()))
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert finished_cleanup == [True]
    assert puller.in_flight == 0
