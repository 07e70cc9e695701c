"""Per-model JetStream lag and worker capacity as gauges, refreshed in the background.

Consumer info is a JetStream API round trip per (model, version, lane); doing it on a timer rather
than at scrape time keeps a scrape from ever waiting on NATS, and bounds the API load however often
Prometheus (or `modelbus top`) asks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from dispatcher.bus.subjects import Subjects
from dispatcher.scheduling.capacity_view import lane_consumers, live_workers
from dispatcher.telemetry import metrics
from dispatcher.telemetry.labels import sanitize
from schemas.config import ModelbusConfig
from schemas.envelope import Lane

log = logging.getLogger(__name__)


async def refresh_lag(
    js: JetStreamContext,
    subjects: Subjects,
    registry: KeyValue,
    config: Callable[[], ModelbusConfig],
    every_s: float = 2.0,
) -> None:
    while True:
        try:
            await _refresh_once(js, subjects, registry, config())
        except Exception as exc:  # noqa: BLE001 - a metric refresher must never die; next round retries
            log.debug("lag refresh failed: %s", exc)
        await asyncio.sleep(every_s)


async def _refresh_once(
    js: JetStreamContext, subjects: Subjects, registry: KeyValue, config: ModelbusConfig
) -> None:
    workers = await live_workers(registry)
    for model in config.models:
        for version in model.version_names:
            mine = [w for w in workers if w.model == model.name and w.version == version]
            # Names from the configuration, sanitized like every other label value.
            name, ver = sanitize(model.name), sanitize(version)
            metrics.WORKERS.labels(name, ver).set(len(mine))
            metrics.FREE_SLOTS.labels(name, ver).set(sum(w.free_slots for w in mine))
            # A lane with affinity buckets has several consumers: its figures are their sums.
            sums: dict[Lane, list[int]] = {}
            for lane, info in await lane_consumers(js, subjects, model.name, version, model.affinity_buckets):
                row = sums.setdefault(lane, [0, 0, 0, 0])
                row[0] += info.num_pending or 0
                row[1] += info.num_ack_pending or 0
                row[2] += info.num_redelivered or 0
                row[3] += info.num_waiting or 0
            for lane, (pending, ack_pending, redelivered, waiting) in sums.items():
                labels = (name, ver, lane.value)
                metrics.QUEUE_PENDING.labels(*labels).set(pending)
                metrics.QUEUE_ACK_PENDING.labels(*labels).set(ack_pending)
                metrics.QUEUE_REDELIVERED.labels(*labels).set(redelivered)
                metrics.QUEUE_WAITING_PULLS.labels(*labels).set(waiting)
