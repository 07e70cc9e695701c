"""Guest slots against a real nats-server: an idle worker takes another worker's new work after the
short guest grace, pinned to its guest slot; stolen work waits for the full steal grace before it
may take a home slot or the guest slot of a busy worker; home work is pinned to the home slots."""

from __future__ import annotations

import asyncio
import time

from nats.aio.msg import Msg

from tests.unit.workers.conftest import AffinityBus, until
from workers.affinity_puller import AffinityPuller


async def test_a_free_guest_slot_takes_stolen_work_at_once_and_only_there(affinity_bus: AffinityBus) -> None:
    taken: dict[str, tuple[float, str | None, int | None]] = {}
    release: dict[str, asyncio.Event] = {}
    puller: AffinityPuller

    async def handler(msg: Msg) -> None:
        body = msg.data.decode()
        taken[body] = (time.monotonic(), puller.affinity(msg), puller.slot(msg))
        release[body] = asyncio.Event()
        await release[body].wait()
        await msg.ack()

    puller = affinity_bus.puller(
        3, handler, guest_slots=1, guest_grace_s=0.05, steal_grace_s=30.0, rescan_s=30.0
    )
    puller.set_home(frozenset({3}))
    task = asyncio.create_task(puller.run())
    try:
        await asyncio.sleep(0.2)
        sent = time.monotonic()
        await affinity_bus.publish(0, "stolen-1")
        await until(lambda: "stolen-1" in taken, timeout=5)
        at, affinity, slot = taken["stolen-1"]
        assert (affinity, slot) == ("stolen", 2)  # the guest slot, long before the 30 s steal grace
        assert at - sent >= 0.05  # after the guest grace that lets an idle home go first
        # The guest slot is taken: more stolen work waits for it (or for the steal grace) while
        # two home slots are free ...
        await affinity_bus.publish(1, "stolen-2")
        await affinity_bus.publish(3, "home-1")
        await until(lambda: "home-1" in taken, timeout=5)
        assert taken["home-1"][1:] == ("home", 0)
        await asyncio.sleep(1.0)
        assert "stolen-2" not in taken
        # ... and, the guest slot free again, still waits while the worker runs work of its own
        # (a cold prefill beside it would hold up its tokens) ...
        release["stolen-1"].set()
        await asyncio.sleep(0.5)
        assert "stolen-2" not in taken
        # ... and goes to the guest slot as soon as the worker is idle.
        release["home-1"].set()
        await until(lambda: "stolen-2" in taken, timeout=5)
        assert taken["stolen-2"][1:] == ("stolen", 2)
        assert puller.max_in_flight == 2
    finally:
        for event in release.values():
            event.set()
        await until(lambda: puller.in_flight == 0)
        puller.stop()
        await task


async def test_home_work_fills_the_home_slots_before_the_guest_slot(affinity_bus: AffinityBus) -> None:
    slots: list[int | None] = []
    puller: AffinityPuller

    async def handler(msg: Msg) -> None:
        slots.append(puller.slot(msg))
        await asyncio.sleep(0.3)
        await msg.ack()

    for bucket in (0, 1, 2):
        await affinity_bus.publish(bucket, f"home-{bucket}")
    puller = affinity_bus.puller(3, handler, guest_slots=1)
    puller.set_home(frozenset({0, 1, 2, 3}))
    task = asyncio.create_task(puller.run())
    await until(lambda: len(slots) == 3 and puller.in_flight == 0)
    puller.stop()
    await task
    # Two home slots for three home requests at once: the third takes the guest slot rather than wait.
    assert sorted(s for s in slots if s is not None) == [0, 1, 2]
    assert 2 not in slots[:2]


async def test_a_steal_that_fills_the_guest_slot_leaves_the_home_slots_alone(
    affinity_bus: AffinityBus,
) -> None:
    """Three of another worker's requests: one goes to the free guest slot, and the two free home
    slots leave the rest to their home for the steal grace (a full guest pull is not a backlog)."""
    taken: list[tuple[str | None, int | None]] = []
    release = asyncio.Event()
    puller: AffinityPuller

    async def handler(msg: Msg) -> None:
        taken.append((puller.affinity(msg), puller.slot(msg)))
        await release.wait()
        await msg.ack()

    for n in range(3):
        await affinity_bus.publish(0, f"stolen-{n}")
    puller = affinity_bus.puller(
        3, handler, guest_slots=1, guest_grace_s=0.05, steal_grace_s=30.0, rescan_s=0.2
    )
    puller.set_home(frozenset({3}))
    task = asyncio.create_task(puller.run())
    try:
        await until(lambda: len(taken) == 1, timeout=5)
        await asyncio.sleep(1.0)  # five rescans
        assert taken == [("stolen", 2)]
    finally:
        release.set()
        puller.stop()
        await task
