"""dispatcher/policy/quotas.py beyond tests/unit/dispatcher/policy/test_quotas.py: Retry-After is exactly when the request
fits, calendar months roll over the year, counters are per consumer, settlement edge cases, and the
limiter fails closed without its counters; on a real nats-server's JetStream counters."""

from __future__ import annotations

import calendar
import uuid
from collections.abc import AsyncIterator

import nats
import pytest

from dispatcher.bus.bus_settings import BusSettings
from dispatcher.bus.subjects import Subjects
from dispatcher.policy.quotas import (
    COST_UNIT,
    Limiter,
    QuotaExceeded,
    QuotaLedger,
    QuotaUnavailable,
    cost_counters,
)
from modelbus.embedded_nats import NatsServer
from schemas.envelope import QuotaReservation
from schemas.policy import Limits

T0 = 1_800_000_000.0  # 15 Jan 2027 08:00 UTC, a minute boundary
DEC31 = calendar.timegm((2026, 12, 31, 23, 0, 0))


@pytest.fixture
async def ledger(nats_server: NatsServer) -> AsyncIterator[tuple[QuotaLedger, Limiter, Subjects]]:
    nc = await nats.connect(nats_server.url)
    subjects = Subjects("q" + uuid.uuid4().hex[:8])
    opened = await QuotaLedger.open(nc, subjects, BusSettings(nats_url=nats_server.url))
    yield opened, Limiter(opened, subjects), subjects
    await nc.close()


async def _fill(limiter: Limiter, limits: Limits, count: int, now: float, consumer: str = "c") -> None:
    for _ in range(count):
        await limiter.admit(consumer, [(None, limits)], 0, now=now)


async def test_retry_after_a_full_minute_is_when_the_sliding_window_has_room(
    ledger: tuple[QuotaLedger, Limiter, Subjects],
) -> None:
    _, limiter, _ = ledger
    limits = Limits(requests_per_min=10)
    await _fill(limiter, limits, 10, T0 + 10)
    with pytest.raises(QuotaExceeded) as refused:
        await limiter.admit("c", [(None, limits)], 0, now=T0 + 20)
    # 10 used in this minute: the next minute must slide on until 10 % of it has gone (6 s).
    assert refused.value.retry_after_s == 46
    with pytest.raises(QuotaExceeded):
        await limiter.admit("c", [(None, limits)], 0, now=T0 + 20 + 45)
    await limiter.admit("c", [(None, limits)], 0, now=T0 + 20 + 46)


async def test_retry_after_the_previous_minutes_tail_is_when_it_has_slid_out(
    ledger: tuple[QuotaLedger, Limiter, Subjects],
) -> None:
    _, limiter, _ = ledger
    limits = Limits(requests_per_min=10)
    await _fill(limiter, limits, 10, T0 + 50)
    await _fill(limiter, limits, 2, T0 + 75)  # 7.5 of the previous minute still counts, + 2
    with pytest.raises(QuotaExceeded) as refused:
        await limiter.admit("c", [(None, limits)], 0, now=T0 + 75)
    assert refused.value.retry_after_s == 3  # at +78, 7 + 2 + 1 = 10
    await limiter.admit("c", [(None, limits)], 0, now=T0 + 78)


async def test_a_refused_request_leaves_every_counter_as_it_was(
    ledger: tuple[QuotaLedger, Limiter, Subjects],
) -> None:
    quotas, limiter, subjects = ledger
    scoped = [(None, Limits(requests_per_min=5, tokens_per_day=100)), ("m", Limits(tokens_per_min=50))]
    await limiter.admit("c", scoped, 40, now=T0)
    with pytest.raises(QuotaExceeded) as refused:
        await limiter.admit("c", scoped, 20, now=T0 + 1)  # 60 > 50 per minute on "m"
    assert (refused.value.limit, refused.value.scope) == ("tokens_per_min", "m")
    assert await quotas.value(subjects.quota("c", None, "rpm", str(int(T0 // 60)))) == 1
    assert await quotas.value(subjects.quota("c", None, "tpd", "20270115")) == 40
    assert await quotas.value(subjects.quota("c", "m", "tpm", str(int(T0 // 60)))) == 40


async def test_limits_are_counted_per_consumer(ledger: tuple[QuotaLedger, Limiter, Subjects]) -> None:
    _, limiter, _ = ledger
    limits = Limits(requests_per_min=2)
    await _fill(limiter, limits, 2, T0, consumer="alice")
    with pytest.raises(QuotaExceeded):
        await limiter.admit("alice", [(None, limits)], 0, now=T0)
    await _fill(limiter, limits, 2, T0, consumer="bob")


async def test_a_month_budget_in_december_ends_on_the_first_of_january(
    ledger: tuple[QuotaLedger, Limiter, Subjects],
) -> None:
    _, limiter, _ = ledger
    limits = [(None, Limits(tokens_per_month=100))]
    await limiter.admit("c", limits, 100, now=DEC31)
    with pytest.raises(QuotaExceeded) as refused:
        await limiter.admit("c", limits, 1, now=DEC31)
    assert refused.value.retry_after_s == 3600  # 23:00 on 31 December to midnight
    await limiter.admit("c", limits, 100, now=DEC31 + 3600)  # January: a new month, a new budget


async def test_a_money_budget_in_december_ends_on_the_first_of_january(
    ledger: tuple[QuotaLedger, Limiter, Subjects],
) -> None:
    quotas, limiter, subjects = ledger
    for counter in cost_counters(subjects, "c", "m", DEC31):
        await quotas.add(counter, 5 * COST_UNIT)
    with pytest.raises(QuotaExceeded) as refused:
        await limiter.admit("c", [("m", Limits(cost_per_month=5.0))], 1, now=DEC31)
    assert (refused.value.limit, refused.value.scope, refused.value.retry_after_s) == (
        "cost_per_month",
        "m",
        3600,
    )


async def test_no_token_limits_and_no_tokens_reserve_nothing(
    ledger: tuple[QuotaLedger, Limiter, Subjects],
) -> None:
    _, limiter, _ = ledger
    assert await limiter.admit("c", [(None, Limits(tokens_per_min=10))], 0, now=T0) is None
    assert await limiter.admit("c", [(None, Limits(requests_per_min=10))], 50, now=T0) is None
    assert await limiter.admit("c", [], 50, now=T0) is None


async def test_settling_unknown_usage_keeps_the_reservation(
    ledger: tuple[QuotaLedger, Limiter, Subjects],
) -> None:
    quotas, limiter, subjects = ledger
    reservation = await limiter.admit("c", [(None, Limits(tokens_per_day=1000))], 300, now=T0)
    assert reservation == QuotaReservation(
        counters=[subjects.quota("c", None, "tpd", "20270115")], tokens=300
    )
    quotas.settle(reservation, None)  # failed part-way: the backend never said what it used
    quotas.settle(reservation, 300)  # exactly as reserved: nothing to correct
    await quotas.drain()
    assert await quotas.value(reservation.counters[0]) == 300
    quotas.settle(reservation, 420)  # more than reserved: the overshoot is counted
    await quotas.drain()
    assert await quotas.value(reservation.counters[0]) == 420


async def test_without_its_counter_stream_the_limiter_fails_closed(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url)
    subjects = Subjects("q" + uuid.uuid4().hex[:8])  # never opened: no counter stream
    limiter = Limiter(QuotaLedger(nc, subjects), subjects)
    try:
        with pytest.raises(QuotaUnavailable):
            await limiter.admit("c", [(None, Limits(requests_per_min=10))], 0, now=T0)
        with pytest.raises(QuotaUnavailable):
            await limiter.admit("c", [(None, Limits(cost_per_day=1.0))], 0, now=T0)
    finally:
        await nc.close()


def test_cost_counters_cover_day_and_month_for_all_models_and_the_model() -> None:
    subjects = Subjects("ns")
    assert cost_counters(subjects, "c", "m", DEC31) == [
        subjects.quota("c", None, "cost", "20261231"),
        subjects.quota("c", None, "costmo", "202612"),
        subjects.quota("c", "m", "cost", "20261231"),
        subjects.quota("c", "m", "costmo", "202612"),
    ]
