"""Admission's side of quotas against real JetStream counters: reject or queue by the consumer's
policy, within its deadline; reservations given back when nothing took them."""

from __future__ import annotations

import uuid

import nats
import pytest

from dispatcher.admission.identity import Identity
from dispatcher.admission.quota_gate import Held, QuotaGate
from dispatcher.bus.bus_settings import BusSettings
from dispatcher.bus.subjects import Subjects
from dispatcher.errors import OverLimit
from dispatcher.policy.quotas import Limiter, QuotaLedger
from modelbus.embedded_nats import NatsServer
from schemas.config import ConsumerConfig
from schemas.policy import Limits

TOKENS = 24  # what a small chat request reserves


class _Clock:
    """Time that passes only when the gate sleeps, so minute windows are crossed at once."""

    def __init__(self, start: float) -> None:
        self.now = start
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


async def _gate(server: NatsServer, clock: _Clock) -> tuple[nats.NATS, QuotaGate, QuotaLedger, Subjects]:
    nc = await nats.connect(server.url)
    subjects = Subjects("g" + uuid.uuid4().hex[:8])
    ledger = await QuotaLedger.open(nc, subjects, BusSettings(nats_url=server.url))
    return nc, QuotaGate(Limiter(ledger, subjects), ledger, clock, clock.sleep), ledger, subjects


def _identity(policy: str) -> Identity:
    settings = ConsumerConfig(name="c", roles=["user"], limits=Limits(requests_per_min=2), over_limit=policy)  # type: ignore[arg-type]
    return Identity("c", "k", frozenset({"user"}), settings=settings)


async def test_reject_policy_answers_429_with_retry_after(nats_server: NatsServer) -> None:
    clock = _Clock(1_800_000_030.0)
    nc, gate, _, _ = await _gate(nats_server, clock)
    identity = _identity("reject")
    deadline = int((clock.now + 600) * 1000)
    for _ in range(2):
        await gate.admit(identity, "m", TOKENS, deadline)
    with pytest.raises(OverLimit) as refused:
        await gate.admit(identity, "m", TOKENS, deadline)
    assert refused.value.status == 429 and refused.value.code == "rate_limit_exceeded"
    assert refused.value.window == "minute" and not refused.value.impossible
    assert refused.value.retry_after_s is not None and 1 <= refused.value.retry_after_s <= 90
    assert clock.slept == [] and gate.rejections == 1
    await nc.close()


async def test_queue_policy_waits_for_room_within_the_deadline(nats_server: NatsServer) -> None:
    clock = _Clock(1_800_000_030.0)
    nc, gate, _, _ = await _gate(nats_server, clock)
    identity = _identity("queue")
    for _ in range(2):
        await gate.admit(identity, "m", TOKENS, int((clock.now + 600) * 1000))
    start = clock.now
    await gate.admit(identity, "m", TOKENS, int((clock.now + 600) * 1000))
    waited = clock.now - start
    # Two requests at :30 of a minute with a limit of 2/min: the third fits once the sliding window
    # has let half a request's weight go, i.e. some time after the next minute begins.
    assert 30 <= waited <= 90 and gate.rejections == 0, clock.slept
    # A deadline too close to wait for: refused, not held.
    with pytest.raises(OverLimit) as refused:
        await gate.admit(identity, "m", TOKENS, int((clock.now + 1) * 1000))
    assert refused.value.status == 429
    # Async callers (no deadline to wait within) are refused at once too.
    with pytest.raises(OverLimit):
        await gate.admit(identity, "m", TOKENS, None)
    await nc.close()


async def test_unclaimed_reservation_is_given_back(nats_server: NatsServer) -> None:
    clock = _Clock(1_800_000_030.0)
    nc, gate, ledger, subjects = await _gate(nats_server, clock)
    identity = Identity(
        "c", "k", frozenset({"user"}), settings=ConsumerConfig(name="c", limits=Limits(tokens_per_day=10_000))
    )
    held = Held(await gate.admit(identity, "m", TOKENS, None))
    day = subjects.quota("c", None, "tpd", "20270115")
    assert await ledger.value(day) == held.reservation.tokens > 0  # type: ignore[union-attr]
    gate.release(held)  # e.g. answered from the cache: nothing reached a worker
    await ledger.drain()
    assert await ledger.value(day) == 0
    taken = Held(await gate.admit(identity, "m", TOKENS, None))
    first = taken.take()
    assert first is not None and first.tokens > 0
    second = taken.take()  # a fallback after the first worker settled: carries nothing
    assert second is not None and second.tokens == 0
    gate.release(taken)
    await ledger.drain()
    assert await ledger.value(day) == first.tokens  # handed over: the worker settles, not the gate
    await nc.close()
