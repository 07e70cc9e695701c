"""Weighted fair share of a saturated model among its consumers, in front of the pull model.

An ingress stages each request under `<ns>.share.<model>.<version>.<lane>.<bucket>` (the bucket is
the consumer, or its `share_group`) instead of the FIFO request subject. One feeder (whoever holds
the lease, see `FeederLease`) moves staged requests into the request stream, oldest first within
a bucket and across buckets in stride-scheduling order (each bucket advances its pass by
1/weight per request released; the lowest pass goes next; a higher `share_tier` goes first), and
only as many as keep each lane's ready queue a few undelivered messages deep. Workers still
pull the request subject by free capacity, untouched, so:

- a newly backlogged consumer enters at the current virtual time and is released next: it waits
  behind at most the ready queue (no deeper than the model's slots: about one service time), not
  behind the whole backlog;
- work-conserving: whenever anything is staged, the ready queue is refilled at least every `poll_s`
  and grows while rounds find a worker waiting on an empty one (`next_depth`); an idle model gets each request forwarded
  as soon as the ingress rings the bell;
- durable and shared: staged requests are JetStream messages; a move republishes with the same
  `Nats-Msg-Id` before deleting, so a feeder dying mid-move (or two feeders racing during a lease
  hand-over) duplicates nothing: the request stream drops the second copy, the second delete fails;
- lanes keep their meaning: each lane has its own ready queue and workers drain interactive first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from dispatcher.bus.bus_settings import BusSettings
from dispatcher.bus.connection import publish_durably
from dispatcher.bus.subjects import Subjects
from dispatcher.bus.topology import ensure_bucket
from dispatcher.errors import BusUnavailable, QueueFull
from dispatcher.scheduling.affinity import AFFINITY_HEADER, ring
from dispatcher.scheduling.capacity_view import (
    QueueKey,
    lane_consumers,
    live_workers,
    staged_by_queue,
    staged_counts,
)
from schemas.envelope import Lane

log = logging.getLogger(__name__)

_KEPT_HEADERS = ("Nats-Msg-Id", "Nats-TTL")
AffinitySpec = Callable[[str], int]  # model -> prefix-affinity buckets (0: none)
_CONSUMER_IDLE_S = 3600.0
_RETRY_S = 0.25

ShareSpec = Callable[[str], tuple[float, int]]  # bucket -> (weight, tier)


@dataclass
class _Bucket:
    weight: float = 1.0
    tier: int = 0
    passed: float = 0.0  # stride scheduling's "pass": virtual time of this bucket's next release
    queued: int = 0


@dataclass
class StrideQueue:
    """Release order of one (model, version, lane) among its backlogged buckets (no I/O)."""

    buckets: dict[str, _Bucket] = field(default_factory=dict)
    virtual_time: float = 0.0  # pass of the last release

    def update(self, queued: dict[str, int], spec: ShareSpec) -> None:
        """Take the staged counts of a fresh scan; a bucket that was idle rejoins at virtual time,
        so it neither starves nor cashes in on credit saved while it sent nothing."""
        for name, bucket in list(self.buckets.items()):
            if name not in queued:
                bucket.queued = 0
                if bucket.passed <= self.virtual_time:
                    del self.buckets[name]  # it would rejoin at virtual time anyway
        for name, count in queued.items():
            bucket = self.buckets.setdefault(name, _Bucket(passed=self.virtual_time))
            if bucket.queued == 0 and count > 0:
                bucket.passed = max(bucket.passed, self.virtual_time)
            bucket.queued = count
            bucket.weight, bucket.tier = spec(name)

    @property
    def backlogged(self) -> bool:
        return any(b.queued > 0 for b in self.buckets.values())

    def next(self) -> str | None:
        """The bucket whose oldest request goes next, charged for it; None if nothing is staged."""
        waiting = [(-b.tier, b.passed, name) for name, b in self.buckets.items() if b.queued > 0]
        if not waiting:
            return None
        name = min(waiting)[2]
        bucket = self.buckets[name]
        self.virtual_time = bucket.passed
        bucket.passed += 1.0 / bucket.weight
        bucket.queued -= 1
        return name

    def refund(self, name: str) -> None:
        """A release that found the bucket empty (its count was stale): undo the charge."""
        bucket = self.buckets.get(name)
        if bucket is not None:
            bucket.passed -= 1.0 / bucket.weight
            bucket.queued = 0


def next_depth(depth: int | None, slots: int, ready: int, starving: bool) -> int:
    """Undelivered requests to keep in a lane's ready queue, adapted each feeder round.

    Deep enough that no slot idles: a round that finds a worker waiting (`starving`: an open pull
    request and nothing ready) doubles it; shallow enough that a newly arriving consumer waits about
    one service time: never more than the model's slots, and it shrinks by one while the queue stays
    more than half full."""
    ceiling = max(1, slots)
    if depth is None:
        return max(1, slots // 2)
    if starving:
        return min(ceiling, depth * 2)
    if ready * 2 > depth:
        return max(1, depth - 1)
    return max(1, min(ceiling, depth))


class ShareFeeder:
    """Moves staged requests to the request stream in fair order; see the module docstring."""

    def __init__(
        self,
        nc: NATS,
        js: JetStreamContext,
        subjects: Subjects,
        spec: ShareSpec,
        registry: KeyValue,
        lease: FeederLease,
        poll_s: float = 0.01,
        idle_s: float = 1.0,
        buckets: AffinitySpec = lambda _: 0,
    ) -> None:
        self._nc, self._js, self._subjects = nc, js, subjects
        self._buckets = buckets
        self._spec, self._registry, self._lease = spec, registry, lease
        self._poll_s, self._idle_s = poll_s, idle_s
        self._slots: dict[tuple[str, str], int] = {}  # (model, version) -> live workers' capacity
        self._slots_at = 0.0
        self._queues: dict[QueueKey, StrideQueue] = {}
        self._depth: dict[QueueKey, int] = {}
        self._pulls: dict[tuple[QueueKey, str], JetStreamContext.PullSubscription] = {}
        self._wake = asyncio.Event()
        self.served: dict[tuple[str, Lane, str], int] = {}  # (model, lane, bucket) -> released

    async def run(self) -> None:
        sub = await self._nc.subscribe(self._subjects.share_bell, cb=self._on_bell)
        try:
            while True:
                released = 0
                try:
                    if await self._lease.hold():
                        await self._refresh_slots()
                        released = await self.feed_once()
                except Exception as exc:  # noqa: BLE001 - a leader election, a reconnect: retry soon
                    log.warning("share feeder round failed: %s", exc)
                    await asyncio.sleep(_RETRY_S)
                if released:
                    continue  # the ready queues may have drained into waiting pulls at once: again
                try:
                    async with asyncio.timeout(self._poll_s if self.backlogged else self._idle_s):
                        await self._wake.wait()
                except TimeoutError:
                    pass
                self._wake.clear()
        finally:
            await sub.unsubscribe()
            await self._lease.release()

    @property
    def backlogged(self) -> bool:
        return any(q.backlogged for q in self._queues.values())

    async def _refresh_slots(self) -> None:
        if time.monotonic() - self._slots_at >= 1.0:
            slots: dict[tuple[str, str], int] = {}
            for worker in await live_workers(self._registry):
                key = (worker.model, worker.version)
                slots[key] = slots.get(key, 0) + worker.capacity
            self._slots, self._slots_at = slots, time.monotonic()

    async def _on_bell(self, _msg: object) -> None:
        self._wake.set()

    async def feed_once(self) -> int:
        """One round: rescan, top up every backlogged ready queue; returns how many were released."""
        staged = staged_by_queue(self._subjects, await staged_counts(self._js, self._subjects))
        await self._forget_idle(staged)
        released = 0
        for key in set(self._queues) | set(staged):
            queue = self._queues.setdefault(key, StrideQueue())
            queue.update(staged.get(key, {}), self._spec)
            if not queue.backlogged:
                if not queue.buckets:
                    del self._queues[key]
                    self._depth.pop(key, None)
                continue
            released += await self._top_up(key, queue)
        return released

    async def _top_up(self, key: QueueKey, queue: StrideQueue) -> int:
        model, version, lane = key
        # No consumer yet counts as nothing ready: its first worker will find the messages waiting.
        buckets = self._buckets(model) if lane is Lane.INTERACTIVE else 0
        found = await lane_consumers(self._js, self._subjects, model, version, buckets)
        infos = [info for of_lane, info in found if of_lane is lane]
        ready = sum(i.num_pending or 0 for i in infos)
        # Affinity workers pull with no_wait (never a waiting pull): an empty ready queue is the sign.
        starving = ready == 0 and (buckets > 0 or sum(i.num_waiting or 0 for i in infos) > 0)
        slots = self._slots.get((model, version), 0)
        depth = next_depth(self._depth.get(key), slots, ready, starving=starving)
        self._depth[key] = depth
        picks: dict[str, int] = {}
        for _ in range(depth - ready):
            name = queue.next()
            if name is None:
                break
            picks[name] = picks.get(name, 0) + 1
        # Buckets move concurrently; within one bucket strictly oldest first.
        return sum(await asyncio.gather(*(self._move(key, queue, name, n) for name, n in picks.items())))

    async def _move(self, key: QueueKey, queue: StrideQueue, bucket: str, count: int) -> int:
        """Release the `count` oldest requests of one bucket: fetch, republish (in order: one
        connection), then ack. A feeder dying in between leaves them unacked; they come back after
        `ack_wait` and the request stream drops the republished copies as duplicates."""
        model, version, lane = key
        pull = await self._pull(key, bucket)
        try:
            msgs = await pull.fetch(count, timeout=0.05)
        except TimeoutError:
            msgs = []
        for _ in range(count - len(msgs)):
            queue.refund(bucket)
        targets = [self._target(key, msg) for msg in msgs]
        try:
            await asyncio.gather(
                *(
                    publish_durably(
                        self._js,
                        target,
                        msg.data,
                        {k: v for k, v in (msg.headers or {}).items() if k in _KEPT_HEADERS},
                        10.0,
                    )
                    for msg, target in zip(msgs, targets, strict=True)
                )
            )
        except BaseException as exc:
            # Not (all) republished — JetStream refused, or this feeder is stopping: hand them back
            # at once rather than after `ack_wait`; a copy that did land is dropped as a duplicate
            # when it is republished.
            refused = isinstance(exc, (BusUnavailable, QueueFull))
            naks = (msg.nak(delay=_RETRY_S if refused else None) for msg in msgs)
            await asyncio.shield(asyncio.gather(*naks, return_exceptions=True))
            if not refused:
                raise
            log.warning("share feeder: %d requests of %r not released: %s", len(msgs), bucket, exc)
            return 0
        await asyncio.gather(*(msg.ack() for msg in msgs))
        for bucket_k in {self._subjects.affinity_bucket_of(t) for t in targets} - {None}:
            assert bucket_k is not None
            await ring(self._nc, self._subjects, model, version, bucket_k)
        served_key = (model, lane, bucket)
        self.served[served_key] = self.served.get(served_key, 0) + len(msgs)
        return len(msgs)

    def _target(self, key: QueueKey, msg: Msg) -> str:
        """The lane's FIFO subject, or the affinity bucket the ingress chose when it staged it."""
        model, version, lane = key
        bucket = (msg.headers or {}).get(AFFINITY_HEADER)
        if bucket is not None and bucket.isdigit() and int(bucket) < self._buckets(model):
            return self._subjects.affinity_request(model, version, int(bucket))
        return self._subjects.request(model, version, lane)

    async def _pull(self, key: QueueKey, bucket: str) -> JetStreamContext.PullSubscription:
        found = self._pulls.get((key, bucket))
        if found is None:
            model, version, lane = key
            name = self._subjects.share_consumer(model, version, lane, bucket)
            config = api.ConsumerConfig(
                durable_name=name,
                description=f"share feeder: {bucket!r} on {model!r} {version!r} {lane.value}",
                ack_policy=api.AckPolicy.EXPLICIT,
                # A feeder killed between fetch and ack delays these by this much; a redelivered
                # move is deduplicated (well inside the duplicate window).
                ack_wait=5,
                max_deliver=-1,
                inactive_threshold=_CONSUMER_IDLE_S,
            )
            found = await self._js.pull_subscribe(
                self._subjects.share(model, version, lane, bucket),
                durable=name,
                stream=self._subjects.share_stream,
                config=config,
            )
            self._pulls[(key, bucket)] = found
        return found

    async def _forget_idle(self, staged: dict[QueueKey, dict[str, int]]) -> None:
        """Close the subscriptions of buckets with nothing staged (the server drops their consumers
        after `_CONSUMER_IDLE_S`), so the feeder holds one per backlogged consumer only."""
        for key, bucket in list(self._pulls):
            if not staged.get(key, {}).get(bucket):
                pull = self._pulls.pop((key, bucket))
                try:
                    await pull.unsubscribe()
                except Exception as exc:  # noqa: BLE001 - the connection may be gone; nothing held
                    log.debug("share pull not closed: %s", exc)

    def metrics(self) -> Iterable[Metric]:
        """Per-consumer staged and released requests of this feeder (only the lease holder feeds)."""
        queued = GaugeMetricFamily(
            "modelbus_share_queued",
            "Requests waiting for their fair share",
            labels=["model", "lane", "consumer"],
        )
        for (model, _, lane), queue in self._queues.items():
            for name, bucket in queue.buckets.items():
                queued.add_metric([model, lane.value, name], float(bucket.queued))
        served = CounterMetricFamily(
            "modelbus_share_released",
            "Requests released to workers by the fair-share feeder",
            labels=["model", "lane", "consumer"],
        )
        for (model, lane, name), count in self.served.items():
            served.add_metric([model, lane.value, name], float(count))
        return [queued, served]


class FeederLease:
    """One feeder at a time: a KV key with the bucket's TTL, renewed by its holder every second,
    deleted by it on a clean stop; the others try to create it every half second.

    Two feeders during a hand-over are harmless (see the module docstring), only wasteful.
    """

    _KEY = "feeder"

    def __init__(self, kv: KeyValue, holder: str, renew_s: float = 1.0, retry_s: float = 0.5) -> None:
        self._kv = kv
        self._holder = holder.encode()
        self._renew_s, self._retry_s = renew_s, retry_s
        self._revision: int | None = None
        self._next_check = 0.0

    async def hold(self) -> bool:
        now = time.monotonic()
        if now < self._next_check:
            return self._revision is not None
        try:
            if self._revision is not None:
                self._revision = await self._kv.update(self._KEY, self._holder, last=self._revision)
            else:
                self._revision = await self._kv.create(self._KEY, self._holder)
        except Exception:  # noqa: BLE001 - held by another (or NATS away): try again shortly
            self._revision = None
        self._next_check = now + (self._renew_s if self._revision is not None else self._retry_s)
        return self._revision is not None

    async def release(self) -> None:
        """On a clean stop: give the lease up so another feeder takes over within `retry_s`."""
        if self._revision is None:
            return
        revision, self._revision = self._revision, None
        try:
            async with asyncio.timeout(1.0):
                await self._kv.delete(self._KEY, last=revision)
        except Exception as exc:  # noqa: BLE001 - it expires with the bucket's TTL anyway
            log.debug("share feeder lease not released: %s", exc)


async def open_feeder(
    nc: NATS,
    js: JetStreamContext,
    subjects: Subjects,
    settings: BusSettings,
    spec: ShareSpec,
    registry: KeyValue,
    holder: str,
    buckets: AffinitySpec = lambda _: 0,
) -> ShareFeeder:
    lease = FeederLease(await open_lease_bucket(js, subjects, settings), holder)
    poll_s = settings.fair_share_poll_s
    return ShareFeeder(nc, js, subjects, spec, registry, lease, poll_s=poll_s, buckets=buckets)


async def open_lease_bucket(js: JetStreamContext, subjects: Subjects, settings: BusSettings) -> KeyValue:
    """The feeder lease's bucket; the dispatcher creates it too, for ingresses that may not.

    On disk, not in memory: a bucket lost in a NATS restart would leave no feeder at all."""
    return await ensure_bucket(
        js, settings, subjects.share_lease_bucket, "Modelbus share feeder lease", ttl_s=3.0
    )
