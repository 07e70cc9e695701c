"""Capacity-bounded pulling across prefix-affinity buckets: home buckets first, steal rather than idle.

A model with `affinity` has one durable consumer per bucket on its interactive lane (see
dispatcher/scheduling/affinity.py). This puller keeps the invariant of `CapacityPuller`,

    in flight + messages still owed by the open pull request <= capacity,

with at most one open request, asking for exactly the free slots. Every request is `no_wait`: it
returns what is there now and closes at once, so the puller is never committed to one bucket while
another has work. What it knows about the buckets:

- a *mark* per bucket that may have work, with the time it became known: set by the bell the
  ingress (or the share feeder) rings after each publish to a bucket, by a rescan that marks every
  bucket each `rescan_s` (a lost bell, a redelivery after a worker died), and kept after a pull
  that came back full (there may be more); cleared by a pull that came back short. A bell replaces
  a mark that only a rescan set: the rescan's guess says nothing about how old the new work is;
- the *home* buckets, set from the live workers by rendezvous hashing.

A free slot takes, in order: the home bucket of the request that just freed it, if it has work —
a backend that keeps a prompt per slot (llama.cpp) has that prefix in exactly the slot now free —
unless another home bucket has been waiting for `warm_limit_s`; the oldest marked home bucket (and
the lane's FIFO consumer, which only carries requests published while affinity was off); else the
oldest *ripe* bucket of another worker (`stolen`); else batch work, as `CapacityPuller` does,
up to its share. So no slot idles while anything is queued for longer than the grace, and a dead
worker's buckets are stolen by the others until the registry drops it and they become somebody's
home; its unacked messages come back after `ack_wait` like any redelivery.

With `per_bucket` (for a backend that keeps one prompt per slot), a bucket whose cap of requests
is already running here is passed over — home or not — until one of them ends; the freed slot then
takes that bucket first, so the next request of the prompt lands in the slot that holds it.

Another worker's bucket is ripe when its *latest* bell is `steal_grace_s` old — long enough for an
idle home worker, which heard the same bell, to take it first (timing from the first bell would let
a message published a moment ago look old, and be stolen from an idle home) — or when a steal from
it came back full (a backlog its home is not keeping up with), or, should bells come faster than
the grace for long, `patience` after the first bell since the bucket was last seen empty (so
stealing cannot be starved by a busy bucket's steady bells).

With `guest_slots` (workers/slot_pins.py) every request is pinned to a backend slot and the last
`guest_slots` of them take stolen work, which can then evict no home prompt: for a worker with
nothing in flight, another worker's bucket is ripe `guest_grace_s` after its latest bell (just long
enough for an idle home worker to take it first), so no worker idles while another has a queue;
the steal grace still decides when stolen work may take a home slot, or a guest slot of a worker
that is busy with its own.
"""

from __future__ import annotations

import time
from collections import Counter, deque

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from dispatcher.bus.subjects import Subjects
from schemas.envelope import Affinity
from workers.pull_loop import CapacityPuller, Handler
from workers.slot_pins import SlotPins

_FIFO = -1  # the lane's own consumer, shared and without affinity
_BATCH_POLL_MIN_S, _BATCH_POLL_MAX_S = 0.05, 1.0
# A bucket counts as active (spread with a bounded load) this long after its last request: long
# enough that a prompt asked every few seconds keeps its home, short enough to follow a new mix.
_ACTIVE_S = 120.0


class AffinityPuller(CapacityPuller):
    def __init__(
        self,
        nc: NATS,
        stream: str,
        consumer: str,
        bucket_consumers: list[str],
        bells: str,
        capacity: int,
        handler: Handler,
        *,
        batch_consumer: str | None = None,
        batch_share: float = 0.75,
        api_prefix: str = "$JS.API",
        rescan_s: float = 1.0,
        steal_grace_s: float = 0.01,
        warm_limit_s: float = 1.0,
        per_bucket: int | None = None,
        guest_slots: int = 0,
        guest_grace_s: float = 0.05,
        first_slot: int = 0,
    ) -> None:
        super().__init__(
            nc,
            stream,
            consumer,
            capacity,
            handler,
            pull_expires_s=rescan_s,
            batch_consumer=batch_consumer,
            batch_share=batch_share,
            api_prefix=api_prefix,
        )
        prefix = f"{api_prefix}.CONSUMER.MSG.NEXT.{stream}."
        self._sources = {_FIFO: self._next_subject} | {
            k: prefix + name for k, name in enumerate(bucket_consumers)
        }
        self._bells = bells
        self.buckets = len(bucket_consumers)
        self._rescan_s, self._grace_s, self._warm_limit_s = rescan_s, steal_grace_s, warm_limit_s
        self._warm: deque[int] = deque(maxlen=capacity)  # buckets whose request just freed a slot
        self.home: frozenset[int] = frozenset(range(len(bucket_consumers)))  # alone until told otherwise
        self._marked: dict[int, float] = {}  # source -> since when it may have work
        self._rung: dict[int, float] = {}  # source -> when its bell last rang
        self._guessed: set[int] = set()  # marks only a rescan set: a bell's time replaces theirs
        self._backlog: set[int] = set()  # other buckets whose last steal came back full
        self._patience_s = max(rescan_s, 4 * steal_grace_s)
        self._per_bucket = per_bucket
        self._running: Counter[int] = Counter()  # bucket -> its requests in flight here
        self._pins = SlotPins(capacity, guest_slots, first_slot) if guest_slots else None
        self._pinned: dict[str, int] = {}  # a running message's reply subject -> its slot
        self._guest_grace_s = guest_grace_s
        self._scan_at = 0.0
        self._open_source: int | None = None
        self._open_sent_at = 0.0
        self._open_for_guests = False  # the open pull asked only for free guest slots
        self._batch_at = 0.0
        self._batch_wait_s = _BATCH_POLL_MIN_S
        self.taken: dict[Affinity, int] = {"home": 0, "stolen": 0}
        self._served_at: dict[int, float] = {}  # bucket -> when this worker last took work from it
        self._home_since: dict[int, float] = {}  # home bucket -> since when
        self._hot: frozenset[int] = frozenset()  # buckets the model's workers served lately

    def set_home(self, home: frozenset[int], hot: frozenset[int] = frozenset()) -> None:
        """This worker's home buckets, and the buckets any worker of the model served lately."""
        self._hot = hot
        if home != self.home:
            now = time.monotonic()
            self._home_since = {k: self._home_since.get(k, now) for k in home}
            self.home = home
            self._wake.set()

    def held(self, now: float) -> list[int]:
        """Home buckets that carried work lately, longest home first: what this worker's cache holds
        and claims to keep (dispatcher/scheduling/affinity.py, assign_homes). A hot bucket counts from
        the moment it is home here, served yet or not: a bucket moved here that nobody claimed would
        go back to its old home at the next turn and flap between the two (seen in bench/affinity.py)."""
        claimed = (self.active_buckets(now) | self._hot) & self.home
        return sorted(claimed, key=lambda k: (self._home_since.get(k, now), k))

    def active_buckets(self, now: float, window_s: float = _ACTIVE_S) -> set[int]:
        """The buckets this worker took work from in the last `window_s` (reported in heartbeats)."""
        return {k for k, at in self._served_at.items() if now - at <= window_s}

    def affinity(self, msg: Msg) -> Affinity | None:
        """`home` or `stolen` for a message of an affinity bucket; None for the FIFO and batch lanes."""
        bucket = Subjects.affinity_bucket_of(msg.subject)
        if bucket is None:
            return None
        return "home" if bucket in self.home else "stolen"

    def slot(self, msg: Msg) -> int | None:
        """The backend slot a running message is pinned to (`id_slot`); None: the backend chooses."""
        return self._pinned.get(msg.reply) if msg.reply else None

    async def run(self) -> None:
        sub = await self._nc.subscribe(self._bells, cb=self._on_bell)
        try:
            await super().run()
        finally:
            await sub.unsubscribe()

    async def _on_bell(self, msg: Msg) -> None:
        bucket = Subjects.affinity_bucket_of(msg.subject)
        if bucket is None or bucket not in self._sources:
            return
        now = time.monotonic()
        self._rung[bucket] = now
        if bucket not in self._marked or bucket in self._guessed:
            self._marked[bucket] = now
            self._guessed.discard(bucket)
        self._wake.set()

    def _room(self, source: int, free: int) -> int:
        """How many of `free` slots may take this source's work (`per_bucket` caps a bucket's)."""
        if self._per_bucket is None or source == _FIFO:
            return free
        return min(free, self._per_bucket - self._running[source])

    def _due(self, source: int) -> float:
        """When a marked source may be pulled: a home one at once, another worker's once ripe (for
        a free guest slot sooner)."""
        due = self._due_for_any_slot(source)
        # Only an idle worker: a cold prefill beside its own requests would hold up their tokens
        # (llama.cpp puts every slot's work in one batch), and a busy worker is no idle slot.
        if self._pins is not None and self.in_flight == 0 and source not in self.home:
            return min(due, self._last_bell(source) + self._guest_grace_s)
        return due

    def _due_for_any_slot(self, source: int) -> float:
        since = self._marked[source]
        if source == _FIFO or source in self.home or source in self._backlog:
            return since
        return min(self._last_bell(source) + self._grace_s, since + self._patience_s)

    def _last_bell(self, source: int) -> float:
        """When a marked source's latest bell rang (its mark's time if none rang since)."""
        return max(self._marked[source], self._rung.get(source, 0.0))

    def _choose(self, now: float) -> int | None:
        open_ = [s for s in self._marked if self._room(s, 1) > 0]
        home = [s for s in open_ if s == _FIFO or s in self.home]
        if home:
            oldest = min(home, key=self._marked.__getitem__)
            if now - self._marked[oldest] < self._warm_limit_s:
                while self._warm:
                    warm = self._warm.popleft()
                    if warm in home:
                        return warm
            return oldest
        ripe = [s for s in open_ if self._due(s) <= now]
        return min(ripe, key=self._marked.__getitem__) if ripe else None

    async def _pull_next(self, free: int) -> None:
        now = time.monotonic()
        if now >= self._scan_at:
            # Found by a rescan, work may be seconds old or just published with its bell on the
            # way: the steal grace applies all the same.
            for source in self._sources:
                if source not in self._marked:
                    self._marked[source] = now
                    self._guessed.add(source)
            self._scan_at = now + self._rescan_s
        chosen = self._choose(now)
        if chosen is not None:
            self._open_source, self._open_sent_at = chosen, now
            room = self._room(chosen, free)
            self._open_for_guests = False
            if self._pins is not None and self._due_for_any_slot(chosen) > now:
                self._open_for_guests = True  # ripe for a guest slot only
                room = min(room, self._pins.free_guests)
            await self._pull(self._sources[chosen], room, None)
            return
        room = min(free, self._batch_limit - self.in_flight_batch)
        if self._batch_subject is not None and room > 0 and now >= self._batch_at:
            self._open_source = None
            await self._pull(self._batch_subject, room, None, batch_lane=True)

    def _close(self, filled: bool = False) -> None:
        if self._open is not None:
            now = time.monotonic()
            if self._open_is_batch:
                # Found batch work: look again at once; found none: back off, up to a second.
                grown = min(self._batch_wait_s * 2, _BATCH_POLL_MAX_S)
                self._batch_wait_s = _BATCH_POLL_MIN_S if self._open_received else grown
                self._batch_at = 0.0 if filled else now + self._batch_wait_s
            elif self._open_source is not None:
                source = self._open_source
                self._guessed.discard(source)
                if filled:
                    self._marked[source] = now  # may hold more: to the back of the line
                    if source not in self.home and not self._open_for_guests:
                        # Its home is not keeping up: keep stealing. (Filling the guest slots says
                        # nothing of the kind: they asked for less than the free slots.)
                        self._backlog.add(source)
                else:
                    self._backlog.discard(source)
                    if self._rung.get(source, 0.0) >= self._open_sent_at:
                        self._marked[source] = self._rung[source]  # rang after we asked: look again
                    else:
                        self._marked.pop(source, None)  # drained
                if self._open_received and source != _FIFO:
                    self._served_at[source] = now
                if self._open_received:
                    kind: Affinity = "home" if source == _FIFO or source in self.home else "stolen"
                    self.taken[kind] += self._open_received
        self._open = None
        self.owed = 0

    async def _on_message(self, msg: Msg) -> None:
        # Counted on arrival, not when its task starts: the loop may choose again before that.
        # (A pull's status reply has no reply subject, and its subject is our inbox.)
        bucket = Subjects.affinity_bucket_of(msg.subject) if msg.reply else None
        if bucket is not None:
            self._running[bucket] += 1
        if self._pins is not None and msg.reply:
            slot = self._pins.take(bucket, stolen=self.affinity(msg) == "stolen")
            if slot is not None:
                self._pinned[msg.reply] = slot
        await super()._on_message(msg)

    async def _run(self, msg: Msg, batch_lane: bool) -> None:
        try:
            await super()._run(msg, batch_lane)
        finally:
            slot = self._pinned.pop(msg.reply, None) if msg.reply else None
            if slot is not None and self._pins is not None:
                self._pins.give(slot)
            bucket = Subjects.affinity_bucket_of(msg.subject)
            if bucket is not None:
                self._running[bucket] -= 1
                self._warm.append(bucket)

    def _wake_at(self, now: float) -> float:
        if self._open is not None:
            return self._written_off_at
        if self._backoff_until > now:
            return self._backoff_until  # nothing is pulled before then, whatever is marked
        wake_at = [self._scan_at]
        if self.capacity > self.in_flight:
            # A home mark is due at once; another worker's when its grace is over.
            # A bucket at its `per_bucket` cap is woken by its own request finishing, not by time.
            wake_at += [self._due(source) for source in self._marked if self._room(source, 1) > 0]
            if self._batch_subject is not None and self.in_flight_batch < self._batch_limit:
                wake_at.append(self._batch_at)
        return min(wake_at)
