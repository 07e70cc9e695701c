"""Admission against a consumer's rate limits and token budgets: 429 + Retry-After, or a short wait.

A consumer whose policy is `queue` waits for room (while its deadline allows) instead of being
refused; one with `reject` gets OpenAI's 429 shape at once. The wait happens here, before anything is
queued on the bus, so a waiting request holds no GPU slot and no place in a model's queue.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from dispatcher.quotas import Limiter, QuotaExceeded, QuotaLedger, QuotaUnavailable
from dispatcher.telemetry import metrics
from ingress.auth import Identity
from ingress.errors import APIError
from ingress.prompt import estimate_tokens
from schemas.envelope import Endpoint, QuotaReservation
from schemas.policy import Limits


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
        if held.reservation is not None and not held.handed_over:
            self._ledger.settle(held.reservation, 0)

    async def admit(
        self,
        identity: Identity,
        model: str,
        endpoint: Endpoint,
        payload: dict[str, Any],
        deadline_ms: int | None,
    ) -> QuotaReservation | None:
        """Reserve against the caller's limits; `deadline_ms` None means the caller cannot wait."""
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
        tokens = estimate_tokens(endpoint, payload)
        may_wait = settings.over_limit == "queue" and deadline_ms is not None
        while True:
            try:
                return await self._limiter.admit(identity.consumer, scoped, tokens, self._clock())
            except QuotaUnavailable:
                raise APIError(
                    503,
                    "usage limits cannot be checked right now; retry",
                    "quota_unavailable",
                    headers={"Retry-After": "1"},
                ) from None
            except QuotaExceeded as exc:
                left_s = (deadline_ms - self._clock() * 1000) / 1000 if deadline_ms is not None else 0.0
                if may_wait and not exc.impossible and exc.retry_after_s < left_s:
                    await self._sleep(exc.retry_after_s)
                    continue
                self.rejections += 1
                metrics.RATE_LIMITED.labels(identity.consumer, model, exc.limit).inc()
                raise _too_many(exc, tokens) from None


def _too_many(exc: QuotaExceeded, tokens: int) -> APIError:
    what = exc.limit.replace("_", " ")
    if exc.impossible:
        message = f"this request needs about {tokens} tokens, more than your {what} limit ({exc.scope})"
    else:
        message = f"{what} limit reached ({exc.scope}); retry after {math.ceil(exc.retry_after_s)} s"
    # OpenAI's codes: budgets are `insufficient_quota`, rates `rate_limit_exceeded`; both are 429.
    code = (
        "insufficient_quota" if exc.limit in ("tokens_per_day", "tokens_per_month") else "rate_limit_exceeded"
    )
    return APIError(429, message, code, headers={"Retry-After": str(math.ceil(exc.retry_after_s))})
