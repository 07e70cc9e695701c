"""The affinity puller against a real nats-server: home buckets first, steal rather than idle,
never more than its capacity."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable

from nats.aio.msg import Msg

from dispatcher.scheduling.affinity import home_buckets
from tests.unit.workers.conftest import BUCKETS, AffinityBus, until
from workers.affinity_puller import AffinityPuller


async def test_a_worker_with_a_home_backlog_takes_home_work_first(affinity_bus: AffinityBus) -> None:
    order: list[tuple[str, str | None]] = []
    puller: AffinityPuller

    async def handler(msg: Msg) -> None:
        order.append((msg.data.decode(), puller.affinity(msg)))
        await asyncio.sleep(0.005)
        await msg.ack()

    for n in range(10):  # the other bucket's work is older ...
        await affinity_bus.publish(1, f"other-{n}", ring=False)
    for n in range(10):
        await affinity_bus.publish(0, f"home-{n}", ring=False)
    puller = affinity_bus.puller(2, handler)
    puller.set_home(frozenset({0}))
    task = asyncio.create_task(puller.run())
    await until(lambda: len(order) == 20)
    puller.stop()
    await task
    # ... but every home request went first, then the idle worker stole the rest.
    assert [body for body, _ in order[:10]] == [f"home-{n}" for n in range(10)]
    assert {label for _, label in order[:10]} == {"home"}
    assert {label for _, label in order[10:]} == {"stolen"}
    assert puller.taken == {"home": 10, "stolen": 10}
    assert puller.max_in_flight == 2


async def _steal_delay(affinity_bus: AffinityBus, grace_s: float) -> float:
    """Seconds from a publish to bucket 0 until a worker home only to bucket 3 takes it (stolen);
    the publish comes 0.2 s after the worker starts, and only its bell can wake it (no rescan)."""
    took: list[float] = []

    async def handler(msg: Msg) -> None:
        took.append(time.monotonic())
        await msg.ack()

    puller = affinity_bus.puller(2, handler, steal_grace_s=grace_s, rescan_s=30.0)
    puller.set_home(frozenset({3}))
    task = asyncio.create_task(puller.run())
    await asyncio.sleep(0.2)
    sent = time.monotonic()
    await affinity_bus.publish(0, "nobody-home")
    await until(lambda: len(took) == 1)
    puller.stop()
    await task
    assert puller.taken == {"home": 0, "stolen": 1}
    return took[0] - sent


async def test_an_idle_worker_steals_another_buckets_work(affinity_bus: AffinityBus) -> None:
    delay = await _steal_delay(affinity_bus, 0.05)  # the start-up scan's guesses were found empty by then
    assert delay < 5.0  # from the bell, not from a rescan 30 s later
    assert delay >= 0.05  # after the grace that lets the home worker go first


async def test_two_idle_workers_each_take_their_own_buckets(affinity_bus: AffinityBus) -> None:
    seen: dict[str, list[str]] = {"a": [], "b": []}

    def handler_of(name: str) -> Callable[[Msg], object]:
        async def handler(msg: Msg) -> None:
            seen[name].append(msg.data.decode())
            await msg.ack()

        return handler

    # A grace far above a loopback round trip: the home worker always hears the bell first.
    a = affinity_bus.puller(2, handler_of("a"), steal_grace_s=0.5)
    b = affinity_bus.puller(2, handler_of("b"), steal_grace_s=0.5)
    a.set_home(frozenset({0, 1}))
    b.set_home(frozenset({2, 3}))
    tasks = [asyncio.create_task(p.run()) for p in (a, b)]
    await asyncio.sleep(0.2)
    for n in range(24):
        await affinity_bus.publish(n % BUCKETS, f"{n % BUCKETS}-{n}")
        await asyncio.sleep(0.01)
    await until(lambda: len(seen["a"]) + len(seen["b"]) == 24)
    for p in (a, b):
        p.stop()
    await asyncio.gather(*tasks)
    assert {body[0] for body in seen["a"]} == {"0", "1"}
    assert {body[0] for body in seen["b"]} == {"2", "3"}
    assert a.taken["stolen"] == b.taken["stolen"] == 0


async def test_a_freed_worker_leaves_fresh_work_to_its_idle_home(affinity_bus: AffinityBus) -> None:
    """A bell heard while busy does not make later work of that bucket look old: the grace runs
    from the latest bell, so the idle home worker takes what was published a moment ago."""
    seen: dict[str, list[str]] = {"a": [], "b": []}

    def handler_of(name: str) -> Callable[[Msg], object]:
        async def handler(msg: Msg) -> None:
            body = msg.data.decode()
            seen[name].append(body)
            if body == "long":
                await asyncio.sleep(0.8)  # busy past the grace of the bell for "early" ...
                await affinity_bus.publish(2, "late")  # ... and free again just after "late" was published
            await msg.ack()

        return handler

    # No rescan while the test runs: a freed slot goes straight to what the bells marked.
    a = affinity_bus.puller(1, handler_of("a"), steal_grace_s=0.5, rescan_s=30.0)
    b = affinity_bus.puller(2, handler_of("b"), steal_grace_s=0.5, rescan_s=30.0)
    a.set_home(frozenset({0, 1}))
    b.set_home(frozenset({2, 3}))
    tasks = [asyncio.create_task(p.run()) for p in (a, b)]
    await asyncio.sleep(0.7)  # the start-up scans' guesses are pulled and found empty
    await affinity_bus.publish(0, "long")
    await until(lambda: seen["a"] == ["long"])
    await affinity_bus.publish(2, "early")
    await until(lambda: len(seen["a"]) + len(seen["b"]) == 3)
    await asyncio.sleep(0.6)  # past the grace of "late": a steal would have happened by now
    for p in (a, b):
        p.stop()
    await asyncio.gather(*tasks)
    assert seen == {"a": ["long"], "b": ["early", "late"]}
    assert a.taken["stolen"] == 0


async def test_a_rescan_guess_does_not_age_a_later_bell(affinity_bus: AffinityBus) -> None:
    delay = await _steal_delay(affinity_bus, 0.4)  # the start-up scan's guess about bucket 0 is not yet due
    assert delay >= 0.4  # the whole grace after the bell, not what was left of the scan's


async def test_steady_bells_do_not_starve_stealing(affinity_bus: AffinityBus) -> None:
    """Bells faster than the grace never let the latest one grow old: the patience after the first
    bell still hands an idle slot the queued work of a home that does not take it."""
    took: list[float] = []

    async def handler(msg: Msg) -> None:
        took.append(time.monotonic())
        await msg.ack()

    puller = affinity_bus.puller(1, handler, steal_grace_s=0.3, rescan_s=0.5)  # patience max(0.5, 4 x 0.3)
    puller.set_home(frozenset({3}))
    task = asyncio.create_task(puller.run())
    await asyncio.sleep(0.2)
    first = time.monotonic()
    while not took and time.monotonic() - first < 5.0:
        await affinity_bus.publish(0, "steady")
        await asyncio.sleep(0.02)
    puller.stop()
    await task
    # Without the patience no bell here is ever 0.3 s old: the slot would idle for the whole 5 s.
    assert took, "an idle slot waited while the bucket had work"
    assert took[0] - first < 3.0


async def test_per_bucket_runs_one_request_of_a_prompt_at_a_time(affinity_bus: AffinityBus) -> None:
    """With `per_bucket=1` a second request of a running bucket waits for the first (and then takes
    its slot) while other buckets' work fills the free slots; the wait costs no busy loop."""
    running: dict[str, int] = {}
    peak: dict[str, int] = {}
    order: list[str] = []

    async def handler(msg: Msg) -> None:
        body = msg.data.decode()
        bucket = body[0]
        running[bucket] = running.get(bucket, 0) + 1
        peak[bucket] = max(peak.get(bucket, 0), running[bucket])
        order.append(body)
        await asyncio.sleep(0.3)
        running[bucket] -= 1
        await msg.ack()

    for n in range(3):
        await affinity_bus.publish(0, f"0-{n}")
    await affinity_bus.publish(1, "1-0")
    puller = affinity_bus.puller(4, handler, per_bucket=1)
    puller.set_home(frozenset({0, 1}))
    cpu, started = time.process_time(), time.monotonic()
    task = asyncio.create_task(puller.run())
    await until(lambda: len(order) == 4 and sum(running.values()) == 0, timeout=4)
    wall, cpu = time.monotonic() - started, time.process_time() - cpu
    puller.stop()
    await task
    assert peak == {"0": 1, "1": 1}
    assert order.index("1-0") < order.index("0-1")  # the other bucket did not wait behind bucket 0
    assert [b for b in order if b[0] == "0"] == ["0-0", "0-1", "0-2"]
    assert 0.85 <= wall < 5.0  # three of bucket 0 one after the other
    assert cpu < 0.5 * wall, f"{cpu:.2f} s of CPU in {wall:.2f} s: the puller spun while waiting"


async def test_a_hot_bucket_keeps_its_home_as_others_turn_hot(affinity_bus: AffinityBus) -> None:
    """Buckets turning hot one by one raise the bounded load's cap; a bucket the cap moved to
    another worker is claimed there at once, so it does not move back when the cap grows (the
    flapping bench/affinity.py showed: prompts served cold on alternate workers)."""
    pullers = {name: affinity_bus.puller(2, lambda msg: None) for name in ("w0", "w1")}
    held: dict[str, list[int]] = {name: [] for name in pullers}
    hot: set[int] = set()
    owners: dict[int, list[str]] = {}
    for bucket in range(BUCKETS):
        hot.add(bucket)
        for _ in range(3):  # heartbeats: every worker reads the others' claims, then reports its own
            for name, puller in pullers.items():
                home = home_buckets(name, pullers, BUCKETS, hot, held)
                puller.set_home(home, frozenset(hot))
            held = {name: puller.held(time.monotonic()) for name, puller in pullers.items()}
            for k in hot:
                owner = [name for name, p in pullers.items() if k in p.home]
                assert len(owner) == 1, (k, owner)
                if owners.setdefault(k, owner)[-1] != owner[0]:
                    owners[k] += owner
    assert all(len(seen) == 1 for seen in owners.values()), owners
    assert sorted(len(p.home & hot) for p in pullers.values()) == [BUCKETS // 2, BUCKETS // 2]


async def test_never_more_than_capacity_across_buckets(affinity_bus: AffinityBus) -> None:
    active = peak = 0
    done: list[str] = []

    async def handler(msg: Msg) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.01)
        active -= 1
        done.append(msg.data.decode())
        await msg.ack()

    puller = affinity_bus.puller(3, handler)
    puller.set_home(frozenset({0}))
    task = asyncio.create_task(puller.run())
    for n in range(80):
        await affinity_bus.publish(n % BUCKETS, str(n))
    # Work published on the FIFO subject (while affinity was off) is still served.
    await affinity_bus.nc.jetstream().publish(affinity_bus.subjects.request("m"), b"fifo")
    await until(lambda: len(done) == 81)
    puller.stop()
    await task
    assert sorted(done) == sorted([str(n) for n in range(80)] + ["fifo"])
    assert peak == 3 and puller.max_in_flight == 3
    for name in [affinity_bus.fifo, *affinity_bus.buckets]:
        info = await affinity_bus.nc.jetstream().consumer_info(affinity_bus.subjects.request_stream, name)
        assert info.num_pending == 0 and info.num_ack_pending == 0


async def _one_slot_order(
    affinity_bus: AffinityBus, each: int, service_s: float, warm_limit_s: float
) -> list[str]:
    """The order in which a one-slot worker home to buckets 0 and 1 serves `each` queued requests
    of both (published alternately, before it starts)."""
    order: list[str] = []

    async def handler(msg: Msg) -> None:
        order.append(msg.data.decode())
        await asyncio.sleep(service_s)
        await msg.ack()

    for n in range(each):
        await affinity_bus.publish(0, f"0-{n}", ring=False)
        await affinity_bus.publish(1, f"1-{n}", ring=False)
    puller = affinity_bus.puller(1, handler, warm_limit_s=warm_limit_s)
    puller.set_home(frozenset({0, 1}))
    task = asyncio.create_task(puller.run())
    await until(lambda: len(order) == 2 * each)
    puller.stop()
    await task
    return order


async def test_a_freed_slot_next_takes_its_own_buckets_work(affinity_bus: AffinityBus) -> None:
    order = await _one_slot_order(affinity_bus, 5, 0.005, warm_limit_s=30.0)
    # One switch between the buckets, not one per request: the slot stays with its prefix.
    switches = sum(a[0] != b[0] for a, b in itertools.pairwise(order))
    assert switches == 1, order


async def test_a_bucket_waiting_past_the_warm_limit_gets_the_slot(affinity_bus: AffinityBus) -> None:
    order = await _one_slot_order(affinity_bus, 6, 0.02, warm_limit_s=0.0)  # no continuation: round robin
    switches = sum(a[0] != b[0] for a, b in itertools.pairwise(order))
    assert switches >= 6, order
