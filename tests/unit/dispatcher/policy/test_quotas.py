"""The limiter against a real nats-server's JetStream counters: exact under concurrency, sliding minute
windows, calendar budgets, all-or-nothing admission, settlement."""

from __future__ import annotations

import asyncio
import uuid

import nats
import pytest

from dispatcher.bus.bus_settings import BusSettings
from dispatcher.bus.subjects import Subjects
from dispatcher.errors import QuotaExceeded
from dispatcher.policy.quotas import COST_UNIT, Limiter, QuotaLedger, cost_counters
from modelbus.embedded_nats import NatsServer
from schemas.policy import Limits

T0 = 1_800_000_000.0  # 15 Jan 2027 08:00 UTC, a minute boundary


async def _limiter(server: NatsServer) -> tuple[nats.NATS, Limiter, QuotaLedger, Subjects]:
    nc = await nats.connect(server.url)
    subjects = Subjects("q" + uuid.uuid4().hex[:8])
    ledger = await QuotaLedger.open(nc, subjects, BusSettings(nats_url=server.url))
    return nc, Limiter(ledger, subjects), ledger, subjects


async def test_concurrent_admissions_never_exceed_the_limit(nats_server: NatsServer) -> None:
    nc, limiter, _, _ = await _limiter(nats_server)
    limits = [(None, Limits(requests_per_min=100))]

    async def one() -> bool:
        try:
            await limiter.admit("c", limits, 0, now=T0 + 10)
            return True
        except QuotaExceeded as exc:
            assert exc.limit == "requests_per_min" and exc.retry_after_s >= 1
            return False

    results = await asyncio.gather(*(one() for _ in range(300)))
    # Rejected requests take their increment back, so none of them is counted against the others.
    assert sum(results) == 100
    await nc.close()


async def test_minute_window_slides(nats_server: NatsServer) -> None:
    nc, limiter, _, _ = await _limiter(nats_server)
    limits = [(None, Limits(requests_per_min=10))]
    for _ in range(10):
        await limiter.admit("c", limits, 0, now=T0 + 50)
    with pytest.raises(QuotaExceeded) as refused:
        await limiter.admit("c", limits, 0, now=T0 + 55)
    assert refused.value.retry_after_s <= 60
    # 15 s into the next minute, 75 % of the previous minute still counts: 7.5 of 10 used.
    for _ in range(2):
        await limiter.admit("c", limits, 0, now=T0 + 75)
    with pytest.raises(QuotaExceeded):
        await limiter.admit("c", limits, 0, now=T0 + 75)
    # 45 s in, 25 % of it counts: 2.5 + 2 used, so 5 more fit but not 6.
    for _ in range(5):
        await limiter.admit("c", limits, 0, now=T0 + 105)
    with pytest.raises(QuotaExceeded):
        await limiter.admit("c", limits, 0, now=T0 + 105)
    await nc.close()


async def test_token_budgets_all_or_nothing_and_settlement(nats_server: NatsServer) -> None:
    nc, limiter, ledger, subjects = await _limiter(nats_server)
    limits = [(None, Limits(tokens_per_day=1000)), ("m", Limits(requests_per_min=100, tokens_per_min=600))]
    first = await limiter.admit("c", limits, 500, now=T0)
    assert first is not None and first.tokens == 500 and len(first.counters) == 2
    # 500 more would break the per-model minute limit: nothing is taken from the day budget either.
    with pytest.raises(QuotaExceeded) as refused:
        await limiter.admit("c", limits, 500, now=T0 + 1)
    assert refused.value.limit == "tokens_per_min" and refused.value.scope == "m"
    day = subjects.quota("c", None, "tpd", "20270115")
    assert await ledger.value(day) == 500
    # The backend reported 120 tokens: the worker settles, and the room comes back.
    ledger.settle(first, 120)
    await ledger.drain()
    assert await ledger.value(day) == 120
    await limiter.admit("c", limits, 450, now=T0 + 2)
    # A request larger than a limit can never fit: said so, not "retry later".
    with pytest.raises(QuotaExceeded) as impossible:
        await limiter.admit("c", limits, 5000, now=T0 + 3)
    assert impossible.value.impossible
    # The day budget is a calendar day: the next one starts empty.
    await limiter.admit("c", [(None, Limits(tokens_per_day=1000))], 900, now=T0 + 86400)
    await nc.close()


async def test_money_budget_refuses_once_spent(nats_server: NatsServer) -> None:
    nc, limiter, ledger, subjects = await _limiter(nats_server)
    limits = [(None, Limits(cost_per_day=2.0)), ("m", Limits(cost_per_month=10.0))]
    await limiter.admit("c", limits, 10, now=T0)
    # What workers add once they know a request's cost (in millionths), for all models and for "m".
    for counter in cost_counters(subjects, "c", "m", T0):
        await ledger.add(counter, int(1.5 * COST_UNIT))
    await limiter.admit("c", limits, 10, now=T0)  # 1.5 of 2.0 spent: still room
    for counter in cost_counters(subjects, "c", "m", T0):
        await ledger.add(counter, int(0.5 * COST_UNIT))
    with pytest.raises(QuotaExceeded) as spent:
        await limiter.admit("c", limits, 10, now=T0)
    assert spent.value.limit == "cost_per_day" and spent.value.scope == "all models"
    assert spent.value.retry_after_s == 16 * 3600  # until the next UTC day
    await limiter.admit("c", limits, 10, now=T0 + 86400)  # a new day; the month has 8 left
    await nc.close()
