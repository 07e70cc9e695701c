"""Rate limits and token budgets that hold across any number of ingress replicas.

Usage lives in JetStream counters (ADR-49, nats-server 2.12+): one counter subject per consumer (and
per model, where limited) and time window, changed only by atomic `Nats-Incr` publishes that return
the new total. Admission adds first and looks second: a request that pushes a total over its limit
takes its own addition back and is refused. Two replicas can therefore never both take the last
unit; the only overshoot comes from token reservations that turn out smaller than the real usage.

Minute limits use a sliding window (the previous minute weighted by how much of it still overlaps
the last 60 s, plus the current minute), so a burst that straddles a minute boundary cannot get twice
the limit. Day and month budgets are calendar windows in UTC.

Tokens are reserved at admission (prompt estimate + `max_tokens`); the worker that serves the request
reconciles with the usage the backend reported (`settle`), for sync, async and batch work alike.

Money is counted, not reserved: the worker adds what a request cost at its model's prices (in
millionths, counters hold integers) to the consumer's day and month counters once it is known, and
admission refuses a consumer whose money budget is already spent. A budget can thus be overshot by
the requests in flight when it runs out, never by more.
"""

from __future__ import annotations

import asyncio
import calendar
import logging
import math
import time
from collections import OrderedDict
from dataclasses import dataclass

import orjson
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from dispatcher.bus.bus_settings import BusSettings
from dispatcher.bus.subjects import Subjects
from dispatcher.errors import QuotaExceeded, QuotaUnavailable
from schemas.envelope import QuotaReservation
from schemas.policy import Limits

log = logging.getLogger(__name__)

_TIMEOUT_S = 2.0
COST_UNIT = 1_000_000  # cost counters count millionths of the configured currency
# Long enough for a calendar month plus a day; older window counters simply age out.
_MAX_AGE_S = 33 * 24 * 3600
_DAY_S = 86_400  # daily budgets reset at midnight UTC


@dataclass(frozen=True, slots=True)
class _Check:
    name: str
    scope: str
    subject: str
    limit: int
    delta: int
    window_s: float
    window_start: float  # epoch seconds
    window_end: float
    previous: str | None = None  # sliding windows: the previous window's subject


class QuotaLedger:
    def __init__(self, nc: NATS, subjects: Subjects) -> None:
        self._nc = nc
        self._subjects = subjects
        # Closed windows never change again (bar small reconciliations): read each once.
        self._closed: OrderedDict[str, int] = OrderedDict()
        self._background: set[asyncio.Task[None]] = set()

    @classmethod
    async def open(cls, nc: NATS, subjects: Subjects, settings: BusSettings) -> QuotaLedger:
        """Create the counter stream if needed (nats-py has no typed config for counters yet)."""
        if not settings.manage_topology:
            return cls(nc, subjects)  # the dispatcher creates it
        config = {
            "name": subjects.quota_stream,
            "subjects": [subjects.all_quotas],
            "allow_msg_counter": True,
            "allow_direct": True,
            "storage": "file",
            "num_replicas": settings.stream_replicas,
            "max_msgs_per_subject": 1,
            "max_age": _MAX_AGE_S * 10**9,
            "discard": "old",
        }
        reply = await nc.request(f"$JS.API.STREAM.CREATE.{subjects.quota_stream}", orjson.dumps(config), 10)
        error = orjson.loads(reply.data).get("error")
        if error is not None and error.get("err_code") != 10058:  # 10058: exists with another config
            raise RuntimeError(f"cannot create the quota stream: {error.get('description')}")
        return cls(nc, subjects)

    async def add(self, subject: str, delta: int) -> int:
        """Add `delta` to a counter; returns the new total."""
        try:
            reply = await self._nc.request(subject, b"", _TIMEOUT_S, headers={"Nats-Incr": str(delta)})
        except (NatsTimeout, NoRespondersError, TimeoutError) as exc:
            raise QuotaUnavailable(str(exc)) from None
        answer = orjson.loads(reply.data)
        if "error" in answer:
            raise QuotaUnavailable(answer["error"].get("description", "counter error"))
        return int(answer["val"])

    async def value(self, subject: str) -> int:
        try:
            reply = await self._nc.request(
                f"$JS.API.DIRECT.GET.{self._subjects.quota_stream}.{subject}", b"", _TIMEOUT_S
            )
        except (NatsTimeout, NoRespondersError, TimeoutError) as exc:
            raise QuotaUnavailable(str(exc)) from None
        if reply.headers and reply.headers.get("Status") == "404":
            return 0
        return int(orjson.loads(reply.data)["val"]) if reply.data else 0

    async def closed_value(self, subject: str) -> int:
        found = self._closed.get(subject)
        if found is None:
            found = await self.value(subject)
            self._closed[subject] = found
            if len(self._closed) > 10_000:
                self._closed.popitem(last=False)
        return found

    def add_soon(self, subject: str, delta: int) -> None:
        """Fire-and-forget adjustment (reconciliation is off the request path)."""

        async def run() -> None:
            try:
                await self.add(subject, delta)
            except QuotaUnavailable as exc:
                log.warning("quota reconciliation of %+d on %s lost: %s", delta, subject, exc)

        task = asyncio.ensure_future(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def settle(self, reservation: QuotaReservation, used_tokens: int | None) -> None:
        """Replace a reservation by the real usage (None: the backend did not say; keep it)."""
        if used_tokens is None or used_tokens == reservation.tokens:
            return
        for subject in reservation.counters:
            self.add_soon(subject, used_tokens - reservation.tokens)

    async def drain(self, timeout_s: float = 2.0) -> None:
        if self._background:
            await asyncio.wait(set(self._background), timeout=timeout_s)


def cost_counters(subjects: Subjects, consumer: str, model: str, now: float) -> list[str]:
    """The counters one request's cost adds to: this day and month, for all models and for `model`."""
    gm = time.gmtime(now)
    day, month = time.strftime("%Y%m%d", gm), time.strftime("%Y%m", gm)
    return [
        subjects.quota(consumer, scope, window, period)
        for scope in (None, model)
        for window, period in (("cost", day), ("costmo", month))
    ]


class Limiter:
    """Admission against a consumer's limits; shared state only in the ledger."""

    def __init__(self, ledger: QuotaLedger, subjects: Subjects) -> None:
        self._ledger = ledger
        self._subjects = subjects

    async def admit(
        self, consumer: str, scoped: list[tuple[str | None, Limits]], tokens: int, now: float | None = None
    ) -> QuotaReservation | None:
        """Take one request and `tokens` from every applicable limit, or raise QuotaExceeded having
        taken nothing. `scoped` pairs a model name (None: all models together) with its limits."""
        now = time.time() if now is None else now
        for model, limits in scoped:
            await self._money_left(consumer, model, limits, now)
        checks = [c for model, limits in scoped for c in self._checks(consumer, model, limits, tokens, now)]
        if not checks:
            return None
        totals = await asyncio.gather(*(self._ledger.add(c.subject, c.delta) for c in checks))
        previous = await asyncio.gather(
            *(self._ledger.closed_value(c.previous) if c.previous else _zero() for c in checks)
        )
        exceeded = [
            _exceeded(c, total, prev, now)
            for c, total, prev in zip(checks, totals, previous, strict=True)
            if _usage(c, total, prev, now) > c.limit
        ]
        if exceeded:
            await asyncio.gather(*(self._ledger.add(c.subject, -c.delta) for c in checks))
            raise max(exceeded, key=lambda e: (e.impossible, e.retry_after_s))
        counters = [c.subject for c in checks if c.name.startswith("tokens_")]
        return QuotaReservation(counters=counters, tokens=tokens) if counters else None

    async def _money_left(self, consumer: str, model: str | None, limits: Limits, now: float) -> None:
        """Raise QuotaExceeded if a money budget is spent (costs are known only after the fact)."""
        gm = time.gmtime(now)
        day_end = (math.floor(now / _DAY_S) + 1) * _DAY_S
        next_month = calendar.timegm((gm.tm_year + gm.tm_mon // 12, gm.tm_mon % 12 + 1, 1, 0, 0, 0))
        for name, limit, window, period, ends in (
            ("cost_per_day", limits.cost_per_day, "cost", time.strftime("%Y%m%d", gm), day_end),
            ("cost_per_month", limits.cost_per_month, "costmo", time.strftime("%Y%m", gm), next_month),
        ):
            if limit is None:
                continue
            used = await self._ledger.value(self._subjects.quota(consumer, model, window, period))
            if used >= limit * COST_UNIT:
                raise QuotaExceeded(name, model if model is not None else "all models", ends - now)

    def _checks(
        self, consumer: str, model: str | None, limits: Limits, tokens: int, now: float
    ) -> list[_Check]:
        scope = model if model is not None else "all models"
        minute = math.floor(now / 60)
        day_start = math.floor(now / _DAY_S) * _DAY_S
        gm = time.gmtime(now)
        month_start = calendar.timegm((gm.tm_year, gm.tm_mon, 1, 0, 0, 0))
        next_month = calendar.timegm((gm.tm_year + gm.tm_mon // 12, gm.tm_mon % 12 + 1, 1, 0, 0, 0))

        def quota(window: str, period: int | str) -> str:
            return self._subjects.quota(consumer, model, window, str(period))

        checks: list[_Check] = []
        for name, limit, delta in (
            ("requests_per_min", limits.requests_per_min, 1),
            ("tokens_per_min", limits.tokens_per_min, tokens),
        ):
            if limit is not None and delta > 0:
                window = "rpm" if name == "requests_per_min" else "tpm"
                checks.append(
                    _Check(
                        name,
                        scope,
                        quota(window, minute),
                        limit,
                        delta,
                        60.0,
                        minute * 60.0,
                        (minute + 1) * 60.0,
                        previous=quota(window, minute - 1),
                    )
                )
        if limits.tokens_per_day is not None and tokens > 0:
            day = time.strftime("%Y%m%d", gm)
            checks.append(
                _Check(
                    "tokens_per_day",
                    scope,
                    quota("tpd", day),
                    limits.tokens_per_day,
                    tokens,
                    _DAY_S,
                    day_start,
                    day_start + _DAY_S,
                )
            )
        if limits.tokens_per_month is not None and tokens > 0:
            month = time.strftime("%Y%m", gm)
            checks.append(
                _Check(
                    "tokens_per_month",
                    scope,
                    quota("tpmo", month),
                    limits.tokens_per_month,
                    tokens,
                    next_month - month_start,
                    month_start,
                    next_month,
                )
            )
        return checks


async def _zero() -> int:
    return 0


def _usage(check: _Check, total: int, previous: int, now: float) -> float:
    if check.previous is None:
        return total
    overlap = 1.0 - (now - check.window_start) / check.window_s
    return previous * overlap + total


def _exceeded(check: _Check, total: int, previous: int, now: float) -> QuotaExceeded:
    """How long until this request would fit, assuming nothing else is admitted meanwhile."""
    room = check.limit - check.delta  # what the others may use for this request to fit
    if room < 0:
        return QuotaExceeded(check.name, check.scope, check.window_s, impossible=True)
    others = total - check.delta
    if check.previous is None:
        wait = check.window_end - now
    elif others > room:
        # Even without the previous window this one is too full: wait for the next window, then for
        # this one's weight to fall far enough.
        wait = (check.window_end - now) + check.window_s * (1 - room / others)
    else:
        # The previous window's tail is the problem: wait until it has slid out far enough.
        needed_overlap = (room - others) / previous if previous else 1.0
        wait = (check.window_end - now) - check.window_s * needed_overlap
    return QuotaExceeded(check.name, check.scope, max(1.0, math.ceil(wait)))
