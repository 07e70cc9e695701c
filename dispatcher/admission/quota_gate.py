"""Admission against a consumer's rate limits and token budgets: refused (429 + Retry-After), or a
short wait for room.

A consumer whose policy is `queue` waits for room (while its deadline allows) instead of being
refused; one with `reject` is refused at once. The wait happens here, before anything is queued on
the bus, so a waiting request holds no GPU slot and no place in a model's queue. Callers that must
not wait here (async submissions, batch lines) pass no deadline: a batch line that meets a minute
limit is put back on its own stream to try again later (see dispatcher/jobs/batch_feeder.py).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from dispatcher.admission.identity import Identity
from dispatcher.errors import (
    RETRY_SOON_S,
    LimitsUnavailable,
    OverLimit,
    QuotaExceeded,
    QuotaUnavailable,
    Window,
)
from dispatcher.policy.quotas import Limiter, QuotaLedger
from dispatcher.telemetry import metrics
from dispatcher.telemetry.labels import sanitize
from schemas.envelope import QuotaReservation
from schemas.policy import Limits

_WINDOWS: dict[str, Window] = {
    "requests_per_min": "minute",
    "tokens_per_min": "minute",
    "tokens_per_day": "day",
    "tokens_per_month": "month",
    "cost_per_day": "day",
    "cost_per_month": "month",
}


@dataclass
class Held:
    """A reservation on its way to a worker. The first enqueue takes it whole; a second one (a
    fallback after a failure) carries zero tokens, since the first worker already settled; if nothing
    took it by the end of the request (cache hit, refusal, replay), the gate gives it back."""

    reservation: QuotaReservation | None
    handed_over: bool = False

    def take(self) -> QuotaReservation | None:
        if self.reservation is None:
            return None
        if self.handed_over:
            return self.reservation.model_copy(update={"tokens": 0})
        self.handed_over = True
        return self.reservation


class QuotaGate:
    def __init__(
        self,
        limiter: Limiter,
        ledger: QuotaLedger,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._limiter = limiter
        self._ledger = ledger
        self._clock = clock  # injectable so tests can cross minute windows without waiting them out
        self._sleep = sleep
        self.rejections = 0

    def release(self, held: Held) -> None:
        """Give back a reservation no envelope took (a refusal further on, a cache hit, a replay)."""
        if held.reservation is not None and not held.handed_over:
            self._ledger.settle(held.reservation, 0)

    def refund(self, held: Held) -> None:
        """Give back a reservation whose envelope will never run (the stream dropped it as a duplicate)."""
        if held.reservation is not None:
            self._ledger.settle(held.reservation, 0)

    async def admit(
        self, identity: Identity, model: str, tokens: int, deadline_ms: int | None
    ) -> QuotaReservation | None:
        """Reserve one request and `tokens` against the caller's limits; `deadline_ms` None means the
        caller cannot wait. Raises OverLimit or LimitsUnavailable having reserved nothing."""
        settings = identity.settings
        if settings is None:
            return None
        scoped: list[tuple[str | None, Limits]] = []
        if settings.limits is not None:
            scoped.append((None, settings.limits))
        per_model = settings.model_limits.get(model)
        if per_model is not None:
            scoped.append((model, per_model))
        if not scoped:
            return None
        may_wait = settings.over_limit == "queue" and deadline_ms is not None
        while True:
            try:
                return await self._limiter.admit(identity.consumer, scoped, tokens, self._clock())
            except QuotaUnavailable:
                raise LimitsUnavailable(
                    "usage limits cannot be checked right now; retry",
                    "quota_unavailable",
                    retry_after_s=RETRY_SOON_S,
                ) from None
            except QuotaExceeded as exc:
                left_s = (deadline_ms - self._clock() * 1000) / 1000 if deadline_ms is not None else 0.0
                if may_wait and not exc.impossible and exc.retry_after_s < left_s:
                    await self._sleep(exc.retry_after_s)
                    continue
                self.rejections += 1
                # The consumer whose limits applied (a configured name, unlike an OIDC caller's own).
                metrics.RATE_LIMITED.labels(
                    sanitize(settings.name), sanitize(model), sanitize(exc.limit)
                ).inc()
                raise _over_limit(exc, tokens) from None


def _over_limit(exc: QuotaExceeded, tokens: int) -> OverLimit:
    what = exc.limit.replace("_", " ")
    if exc.impossible:
        message = f"this request needs about {tokens} tokens, more than your {what} limit ({exc.scope})"
    else:
        message = f"{what} limit reached ({exc.scope}); retry after {math.ceil(exc.retry_after_s)} s"
    window = _WINDOWS[exc.limit]
    # OpenAI's codes: budgets are `insufficient_quota`, rates `rate_limit_exceeded`; both are 429.
    code = "rate_limit_exceeded" if window == "minute" else "insufficient_quota"
    return OverLimit(
        message,
        code,
        retry_after_s=float(math.ceil(exc.retry_after_s)),
        window=window,
        impossible=exc.impossible,
    )
