"""Graceful degradation, chosen per consumer.

When a model has no live worker or its queue would exceed the consumer's wait budget: fall back
along the model's chain (also when the model fails a request), serve a cached answer (the same
request's, or a similar one's from the semantic cache), queue the request as an async task (202), or
fail fast (503 with Retry-After). The response says what happened in the `x-modelbus-degraded`
header. A consumer with no policy waits in the queue until its deadline. Models whose semantic cache
takes the first look answer similar requests from it before anything else (`x-modelbus-cache`).

Every step keeps what admission decided: a fallback is re-admitted for its own model (RBAC and that
model's guardrails; a fallback they refuse is skipped), a queued task carries the same quota hold and
output guardrails, and a cached answer passes the caller's output guardrails before it leaves.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import Request
from starlette.responses import Response

from dispatcher.admission.admitted import Admitted
from dispatcher.admission.pipeline import Admission, Notes
from dispatcher.caching.response_cache import ResponseCache
from dispatcher.caching.semantic_cache import Hit, SemanticCache
from dispatcher.caching.semantic_keys import Probe
from dispatcher.guardrails.response import ResponseGuard
from ingress.audit_events import AuditDraft
from ingress.error_responses import APIError
from ingress.model_health import ModelHealth
from ingress.task_intake import TaskIntake
from schemas.envelope import Endpoint

HEADER = "x-modelbus-degraded"
CACHE_HEADER = "x-modelbus-cache"
# A consumer that chose to fail fast is told to come back after a few seconds: long enough for a
# saturated model to drain a little, short enough for an interactive retry.
_FAIL_FAST_RETRY_AFTER_S = 5


@dataclass(frozen=True)
class Route:
    admitted: Admitted
    degraded: str | None = None  # e.g. "fallback:small-model"
    probe: Probe | None = None  # the semantic cache's view of the request, to keep its answer


class Degradation:
    def __init__(
        self,
        admission: Admission,
        health: ModelHealth | None,
        tasks: TaskIntake,
        cache: ResponseCache | None = None,
        semantic: SemanticCache | None = None,
    ) -> None:
        self._admission = admission
        self._health = health
        self._tasks = tasks
        self._cache = cache
        self._semantic = semantic
        self._writes: set[asyncio.Task[None]] = set()

    def remember(self, admitted: Admitted, body: bytes, request_id: str, probe: Probe | None) -> None:
        """Keep a plain answer for the cache steps, after the response (never on its path)."""
        if admitted.endpoint is Endpoint.RESPONSES:
            return  # a response has its own id and stored conversation: it is never another's answer
        if self._cache is not None and admitted.target.cache and not admitted.stream:
            self._later(self._cache.put(admitted.target.name, admitted.payload, body))
        if self._semantic is None:
            return
        found = self._semantic.probe(admitted)  # for the model that answered (a fallback, maybe)
        if found is None:
            return
        if probe is not None and probe.embedding_model == found.embedding_model:
            found.vector = probe.vector  # embedded once per request
        self._later(self._semantic.store(admitted, found, body, request_id))

    def _later(self, write: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(write)
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
        probe = self._semantic.probe(admitted) if self._semantic is not None else None
        semantic = admitted.target.semantic_cache
        if probe is not None and semantic is not None and semantic.first_look:
            hit = await self._semantic_hit(admitted, probe)
            if hit is not None:
                return _from_semantic_cache(admitted, hit, draft, {})
        consumer = admitted.identity.settings
        if self._health is None or consumer is None or not consumer.degradation:
            return Route(admitted, probe=probe)
        target = admitted.target
        trouble = self._health.trouble(target, consumer.wait_budget_s)
        if trouble is None:
            return Route(admitted, probe=probe)
        for step in consumer.degradation:
            if step == "fallback":
                fallback = await self._fallback(admitted, consumer.wait_budget_s, draft)
                if fallback is not None:
                    return Route(fallback, f"fallback:{fallback.target.name}", probe)
            elif step == "cache" and self._cache is not None and not admitted.stream:
                cached = await self._cache.get(target.name, admitted.payload)
                if cached is not None:
                    body = _guarded(admitted, cached, draft)
                    draft.body = body
                    headers = {HEADER: f"cache:{trouble}", "x-modelbus-model": target.name}
                    return Response(body, media_type="application/json", headers=headers)
            elif step == "semantic_cache" and probe is not None:
                hit = await self._semantic_hit(admitted, probe)
                if hit is not None:
                    return _from_semantic_cache(admitted, hit, draft, {HEADER: f"semantic_cache:{trouble}"})
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
                    headers={"Retry-After": str(_FAIL_FAST_RETRY_AFTER_S), HEADER: f"failed:{trouble}"},
                )
        return Route(admitted, probe=probe)

    async def _semantic_hit(self, admitted: Admitted, probe: Probe) -> Hit | None:
        assert self._semantic is not None
        return await self._semantic.lookup(admitted, probe)


def _from_semantic_cache(
    admitted: Admitted, hit: Hit, draft: AuditDraft, headers: dict[str, str]
) -> Response:
    """A similar request's answer, as this caller may see it; the audit row names where it came from."""
    body = _guarded(admitted, hit.body, draft)
    draft.body = body
    draft.policy_actions.append(f"cache:semantic;similarity={hit.similarity:.3f};from={hit.source}")
    headers = {
        **headers,
        CACHE_HEADER: f"semantic;similarity={hit.similarity:.2f}",
        "x-modelbus-model": admitted.target.name,
    }
    return Response(body, media_type="application/json", headers=headers)


def _guarded(admitted: Admitted, cached: bytes, draft: AuditDraft) -> bytes:
    """A cached answer as this caller may see it: it was stored under someone else's output policy."""
    if admitted.output_guard is None:
        return cached
    body = orjson.loads(cached)
    guard = ResponseGuard(admitted.output_guard, admitted.endpoint)
    guard.body(body)
    draft.policy_actions.extend(e for e in dict.fromkeys(guard.events) if e not in draft.policy_actions)
    return orjson.dumps(body)
