"""Routing by cost and wait: a request for a pool goes to the cheapest member whose estimated queue
wait fits the request's `max_wait_ms` (and whose estimated cost fits its `max_cost`).

The estimate of a request's cost is the admission token estimate priced per member: prompt tokens
at the input price, the most it may generate at the output price. The wait comes from the live view
an ingress keeps anyway (ingress/model_health.py: queued work over capacity times service time), so
choosing costs a dictionary lookup per member. When no member's wait fits, the fastest affordable
member serves (the caller learns why in `x-modelbus-route`); when none is affordable, the request
is refused, since `max_cost` is a ceiling.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from dispatcher.errors import InvalidRequest
from schemas.config import ModelConfig
from schemas.traffic import PoolConfig, RouteNeeds

# The estimated wait of a model in seconds; None: it has no live worker.
WaitOf = Callable[[str], float | None]


@dataclass(frozen=True, slots=True)
class PoolChoice:
    model: ModelConfig
    reason: str  # for `x-modelbus-route` and the audit row: which member, and why


@dataclass(frozen=True, slots=True)
class _Option:
    model: ModelConfig
    cost: float
    wait_s: float | None  # None: unknown (no live view here, or no live worker)


def choose_member(
    pool: PoolConfig,
    members: list[ModelConfig],
    needs: RouteNeeds,
    prompt_tokens: int,
    output_tokens: int,
    wait_of: WaitOf | None,
) -> PoolChoice:
    """`members`: those the caller may use on this endpoint, in the pool's order (never empty)."""
    options = [
        _Option(
            m,
            m.cost.of(prompt_tokens, output_tokens) if m.cost else 0.0,
            wait_of(m.name) if wait_of else None,
        )
        for m in members
    ]
    if wait_of is not None:
        # Members with no live worker only if none has one: then the request waits in a queue anyway.
        options = [o for o in options if o.wait_s is not None] or options
    affordable = [o for o in options if needs.max_cost is None or o.cost <= needs.max_cost]
    if not affordable:
        cheapest = min(options, key=lambda o: o.cost)
        raise InvalidRequest(
            f"no model of the pool {pool.name!r} fits max_cost {needs.max_cost:g}: the cheapest, "
            f"{cheapest.model.name!r}, is estimated at {cheapest.cost:.6g} for this request",
            "cost_over_limit",
            "x-modelbus-max-cost",
        )
    if needs.max_wait_ms is None:
        best = min(affordable, key=lambda o: (o.cost, _wait(o)))
        return PoolChoice(best.model, _reason(pool, best, "cheapest"))
    limit_s = needs.max_wait_ms / 1000
    in_time = [o for o in affordable if _wait(o) <= limit_s]
    if in_time:
        best = min(in_time, key=lambda o: (o.cost, _wait(o)))
        return PoolChoice(
            best.model, _reason(pool, best, f"cheapest within max_wait_ms={needs.max_wait_ms:g}")
        )
    best = min(affordable, key=lambda o: (_wait(o), o.cost))
    return PoolChoice(
        best.model, _reason(pool, best, f"fastest; none within max_wait_ms={needs.max_wait_ms:g}")
    )


def _wait(option: _Option) -> float:
    return option.wait_s if option.wait_s is not None else 0.0


def _reason(pool: PoolConfig, option: _Option, why: str) -> str:
    wait = "unknown" if option.wait_s is None else f"{option.wait_s:.2f}s"
    return f"pool:{pool.name}->{option.model.name} ({why}; wait {wait}, cost {option.cost:.6g})"
