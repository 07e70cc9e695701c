"""Graceful degradation, chosen per consumer.

When a model has no live worker or its queue would exceed the consumer's wait budget: fall back
along the model's chain (also when the model fails a request), serve a cached answer, queue the request as an async task (202), or fail
fast (503 with Retry-After). The response says what happened in the `x-modelbus-degraded` header.
A consumer with no policy waits in the queue until its deadline.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from starlette.responses import Response

from dispatcher.response_cache import ResponseCache
from ingress.auth import Identity
from ingress.errors import APIError
from ingress.live_config import LiveConfig
from ingress.model_health import ModelHealth
from ingress.quota import Held
from ingress.tasks import TaskIntake
from schemas.config import ModelConfig
from schemas.envelope import Endpoint

HEADER = "x-modelbus-degraded"


@dataclass(frozen=True)
class Route:
    target: ModelConfig
    degraded: str | None = None  # e.g. "fallback:small-model"


class Degradation:
    def __init__(
        self,
        live: LiveConfig,
        health: ModelHealth | None,
        tasks: TaskIntake,
        cache: ResponseCache | None = None,
    ) -> None:
        self._live = live
        self._health = health
        self._tasks = tasks
        self._cache = cache
        self._writes: set[asyncio.Task[None]] = set()

    def remember(self, model: ModelConfig, payload: dict[str, Any], body: bytes) -> None:
        """Keep a plain answer for the cache step, after the response (never on its path)."""
        if self._cache is None or not model.cache or payload.get("stream"):
            return
        task = asyncio.create_task(self._cache.put(model.name, payload, body))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    def after_failure(
        self, identity: Identity, endpoint: Endpoint, target: ModelConfig, status: int
    ) -> ModelConfig | None:
        """A healthy fallback for a model that just failed a request, if the consumer wants one."""
        consumer = identity.settings
        if status < 500 or consumer is None or "fallback" not in consumer.degradation:
            return None
        for name in target.fallbacks:
            fallback = self._live.config.model(name)
            healthy = (
                self._health is None or self._health.trouble(fallback, None) is None if fallback else False
            )
            if fallback is not None and endpoint in fallback.endpoints and healthy:
                return fallback
        return None

    async def route(
        self,
        request: Request,
        identity: Identity,
        endpoint: Endpoint,
        target: ModelConfig,
        payload: dict[str, Any],
        quota: Held | None = None,
    ) -> Route | Response:
        consumer = identity.settings
        if self._health is None or consumer is None or not consumer.degradation:
            return Route(target)
        trouble = self._health.trouble(target, consumer.wait_budget_s)
        if trouble is None:
            return Route(target)
        for step in consumer.degradation:
            if step == "fallback":
                for name in target.fallbacks:
                    fallback = self._live.config.model(name)
                    if (
                        fallback is not None
                        and endpoint in fallback.endpoints
                        and (self._health.trouble(fallback, consumer.wait_budget_s) is None)
                    ):
                        return Route(fallback, f"fallback:{name}")
            elif step == "cache" and self._cache is not None and not payload.get("stream"):
                cached = await self._cache.get(target.name, payload)
                if cached is not None:
                    headers = {HEADER: f"cache:{trouble}", "x-modelbus-model": target.name}
                    return Response(cached, media_type="application/json", headers=headers)
            elif step == "queue":
                response = await self._tasks.accept(request, identity, endpoint, target, payload, quota=quota)
                response.headers[HEADER] = f"queued:{trouble}"
                return response
            elif step == "fail":
                raise APIError(
                    503,
                    f"the model {target.name!r} cannot serve now ({trouble.replace('_', ' ')})",
                    "model_unavailable",
                    headers={"Retry-After": "5", HEADER: f"failed:{trouble}"},
                )
        return Route(target)
