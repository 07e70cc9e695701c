"""Graceful degradation, chosen per consumer.

When a model has no live worker or its queue would exceed the consumer's wait budget: fall back
along the model's chain (also when the model fails a request), serve a cached answer, queue the
request as an async task (202), or fail fast (503 with Retry-After). The response says what happened
in the `x-modelbus-degraded` header. A consumer with no policy waits in the queue until its deadline.

Every step keeps what admission decided: a fallback is re-admitted for its own model (RBAC and that
model's guardrails; a fallback they refuse is skipped), a queued task carries the same quota hold and
output guardrails, and a cached answer passes the caller's output guardrails before it leaves.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import orjson
from fastapi import Request
from starlette.responses import Response

from dispatcher.admission.admitted import Admitted
from dispatcher.admission.pipeline import Admission, Notes
from dispatcher.guardrails.response import ResponseGuard
from dispatcher.response_cache import ResponseCache
from ingress.audit import AuditDraft
from ingress.errors import APIError
from ingress.model_health import ModelHealth
from ingress.tasks import TaskIntake
from schemas.envelope import Endpoint

HEADER = "x-modelbus-degraded"


@dataclass(frozen=True)
class Route:
    admitted: Admitted
    degraded: str | None = None  # e.g. "fallback:small-model"


class Degradation:
    def __init__(
        self,
        admission: Admission,
        health: ModelHealth | None,
        tasks: TaskIntake,
        cache: ResponseCache | None = None,
    ) -> None:
        self._admission = admission
        self._health = health
        self._tasks = tasks
        self._cache = cache
        self._writes: set[asyncio.Task[None]] = set()

    def remember(self, admitted: Admitted, body: bytes) -> None:
        """Keep a plain answer for the cache step, after the response (never on its path)."""
        if self._cache is None or not admitted.target.cache or admitted.stream:
            return
        if admitted.endpoint is Endpoint.RESPONSES:
            return  # a response has its own id and stored conversation: it is never another's answer
        task = asyncio.create_task(self._cache.put(admitted.target.name, admitted.payload, body))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def after_failure(self, admitted: Admitted, status: int, notes: Notes) -> Admitted | None:
        """A healthy fallback for a model that just failed a request, if the consumer wants one."""
        consumer = admitted.identity.settings
        if status < 500 or consumer is None or "fallback" not in consumer.degradation:
            return None
        return await self._fallback(admitted, None, notes)

    async def _fallback(
        self, admitted: Admitted, wait_budget_s: float | None, notes: Notes
    ) -> Admitted | None:
        config = self._admission.config
        for name in admitted.target.fallbacks:
            model = config.model(name)
            if model is None or not model.serves(admitted.endpoint):
                continue
            if self._health is not None and self._health.trouble(model, wait_budget_s) is not None:
                continue
            found = await self._admission.retarget(admitted, model, notes)
            if found is not None:
                return found
        return None

    async def route(self, request: Request, admitted: Admitted, draft: AuditDraft) -> Route | Response:
        consumer = admitted.identity.settings
        if self._health is None or consumer is None or not consumer.degradation:
            return Route(admitted)
        target = admitted.target
        trouble = self._health.trouble(target, consumer.wait_budget_s)
        if trouble is None:
            return Route(admitted)
        for step in consumer.degradation:
            if step == "fallback":
                fallback = await self._fallback(admitted, consumer.wait_budget_s, draft)
                if fallback is not None:
                    return Route(fallback, f"fallback:{fallback.target.name}")
            elif step == "cache" and self._cache is not None and not admitted.stream:
                cached = await self._cache.get(target.name, admitted.payload)
                if cached is not None:
                    body = _guarded(admitted, cached, draft)
                    draft.body = body
                    headers = {HEADER: f"cache:{trouble}", "x-modelbus-model": target.name}
                    return Response(body, media_type="application/json", headers=headers)
            elif step == "queue":
                draft.policy_actions.append(f"degraded:queued:{trouble}")  # into the task's audit row
                response = await self._tasks.accept(request, admitted.as_task())
                response.headers[HEADER] = f"queued:{trouble}"
                return response
            elif step == "fail":
                raise APIError(
                    503,
                    f"the model {target.name!r} cannot serve now ({trouble.replace('_', ' ')})",
                    "model_unavailable",
                    headers={"Retry-After": "5", HEADER: f"failed:{trouble}"},
                )
        return Route(admitted)


def _guarded(admitted: Admitted, cached: bytes, draft: AuditDraft) -> bytes:
    """A cached answer as this caller may see it: it was stored under someone else's output policy."""
    if admitted.output_guard is None:
        return cached
    body = orjson.loads(cached)
    guard = ResponseGuard(admitted.output_guard, admitted.endpoint)
    guard.body(body)
    draft.policy_actions.extend(e for e in dict.fromkeys(guard.events) if e not in draft.policy_actions)
    return orjson.dumps(body)
