"""What an ingress knows about each model's workers, kept current without touching the hot path.

A watch on the worker registry keeps live workers in memory (an entry counts until its heartbeat
is older than the registry's TTL); queue depths are refreshed once a second from consumer info (plus requests staged for their fair share).
Requests then ask `trouble()`, which is a dictionary lookup.
"""

from __future__ import annotations

import asyncio
import logging
import time

from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from pydantic import ValidationError

from dispatcher.admission.live_config import LiveConfig
from dispatcher.bus.kv_watch import watch_bucket
from dispatcher.bus.subjects import Subjects
from dispatcher.scheduling.capacity_view import (
    estimated_wait_s,
    lane_consumers,
    staged_by_queue,
    staged_counts,
)
from schemas.capacity import WorkerStatus
from schemas.config import ModelConfig

log = logging.getLogger(__name__)


class ModelHealth:
    def __init__(
        self,
        js: JetStreamContext,
        subjects: Subjects,
        registry: KeyValue,
        live: LiveConfig,
        stale_after_s: float,
    ) -> None:
        self._js = js
        self._subjects = subjects
        self._registry = registry
        self._live = live
        self._stale_after_s = stale_after_s
        self._workers: dict[str, WorkerStatus] = {}  # registry key -> latest status
        # model -> (messages waiting, messages in flight), all versions and lanes
        self._queued: dict[str, tuple[int, int]] = {}

    def live_workers(self, model: str) -> list[WorkerStatus]:
        oldest = (time.time() - self._stale_after_s) * 1000
        return [w for w in self._workers.values() if w.model == model and w.updated_ms >= oldest]

    def estimated_wait_s(self, model: str) -> float | None:
        queued, in_flight = self._queued.get(model, (0, 0))
        return estimated_wait_s(self.live_workers(model), queued, in_flight)

    def trouble(self, model: ModelConfig, wait_budget_s: float | None) -> str | None:
        """Why `model` cannot serve a request now, or None if it can."""
        if not self.live_workers(model.name):
            return "no_live_workers"
        wait = self.estimated_wait_s(model.name)
        if wait_budget_s is not None and wait is not None and wait > wait_budget_s:
            return "wait_over_budget"
        return None

    async def watch_workers(self) -> None:
        """Keep `live_workers` current until cancelled or the watch is lost (then, supervised, again)."""
        bucket = self._subjects.worker_bucket
        async for entry in watch_bucket(self._js, self._registry, bucket):
            if entry is None:
                continue
            if entry.operation is not None or not entry.value:  # deleted: stopped cleanly
                self._workers.pop(entry.key, None)
                continue
            try:
                self._workers[entry.key] = WorkerStatus.model_validate_json(entry.value)
            except ValidationError:
                log.warning("unreadable worker status %s ignored", entry.key)

    async def refresh_queues(self, every_s: float = 1.0) -> None:
        while True:
            try:
                staged = staged_by_queue(self._subjects, await staged_counts(self._js, self._subjects))
            except Exception as exc:  # noqa: BLE001 - counted as nothing staged this round
                log.debug("staged requests unknown: %s", exc)
                staged = {}
            waiting: dict[str, int] = {}
            for (model_name, _, _), buckets in staged.items():
                waiting[model_name] = waiting.get(model_name, 0) + sum(buckets.values())
            for model in self._live.config.models:
                queued, in_flight = waiting.get(model.name, 0), 0
                for version in model.version_names:
                    try:
                        lanes = await lane_consumers(
                            self._js, self._subjects, model.name, version, model.affinity_buckets
                        )
                    except Exception as exc:  # noqa: BLE001 - keep the last figure; retry next round
                        log.debug("queue depth of %s unknown: %s", model.name, exc)
                        continue
                    for _, info in lanes:
                        queued += info.num_pending or 0
                        in_flight += info.num_ack_pending or 0
                self._queued[model.name] = (queued, in_flight)
            await asyncio.sleep(every_s)
