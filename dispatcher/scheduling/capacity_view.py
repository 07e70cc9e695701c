"""The live capacity view: worker heartbeats in a KV bucket with TTL, joined with JetStream lag.

Workers put their status every `heartbeat_s` under `<model>.<version>.<worker>`; the bucket's TTL
drops a worker that stopped heartbeating (crashed, partitioned) within a few seconds, and a worker
that stops cleanly deletes its key at once. The view per (model, version) then adds consumer lag:
messages waiting, in flight and redelivered, and an estimate of the queue wait.
"""

from __future__ import annotations

import asyncio
import logging

from nats.js import JetStreamContext, api
from nats.js.errors import NoKeysError, NotFoundError
from nats.js.kv import KeyValue
from pydantic import ValidationError

from dispatcher.bus.bus_settings import BusSettings
from dispatcher.bus.subjects import Subjects
from dispatcher.bus.topology import ensure_bucket
from schemas.capacity import ConsumerShare, ModelCapacity, WorkerStatus
from schemas.config import ModelbusConfig
from schemas.envelope import Lane

log = logging.getLogger(__name__)

QueueKey = tuple[str, str, Lane]  # model, version, lane

# A worker is gone after missing this many heartbeats.
_MISSED_HEARTBEATS = 3


async def open_registry(js: JetStreamContext, subjects: Subjects, settings: BusSettings) -> KeyValue:
    ttl = max(3.0, settings.heartbeat_s * _MISSED_HEARTBEATS)
    return await ensure_bucket(
        js, settings, subjects.worker_bucket, "Modelbus live workers (heartbeats)", ttl_s=ttl, in_memory=True
    )


async def live_workers(registry: KeyValue) -> list[WorkerStatus]:
    try:
        keys = await registry.keys()
    except (NotFoundError, NoKeysError):
        return []
    workers = []
    for key in keys:
        try:
            entry = await registry.get(key)
        except NotFoundError:
            continue  # expired between listing and reading
        if entry.value:
            try:
                workers.append(WorkerStatus.model_validate_json(entry.value))
            except ValidationError:
                log.warning("unreadable worker status %s ignored", key)
    return workers


async def lane_consumers(
    js: JetStreamContext, subjects: Subjects, model: str, version: str, buckets: int = 0
) -> list[tuple[Lane, api.ConsumerInfo]]:
    """Consumer info of each lane of one model version, and of its `buckets` affinity buckets (on the
    interactive lane); consumers that do not exist yet are left out."""
    names = [(lane, subjects.consumer(model, version, lane)) for lane in Lane]
    names += [(Lane.INTERACTIVE, subjects.affinity_consumer(model, version, k)) for k in range(buckets)]

    async def info(name: str) -> api.ConsumerInfo | None:
        try:
            found: api.ConsumerInfo = await js.consumer_info(subjects.request_stream, name)
        except NotFoundError:
            return None
        return found

    found = await asyncio.gather(*(info(name) for _, name in names))
    return [(lane, one) for (lane, _), one in zip(names, found, strict=True) if one is not None]


async def staged_counts(js: JetStreamContext, subjects: Subjects) -> dict[str, int]:
    """Staged requests per share subject (one API call, whatever the number of consumers)."""
    try:
        info = await js.stream_info(subjects.share_stream, subjects_filter=subjects.all_shares)
    except NotFoundError:
        return {}
    return dict(info.state.subjects or {})


def staged_by_queue(subjects: Subjects, counts: dict[str, int]) -> dict[QueueKey, dict[str, int]]:
    found: dict[QueueKey, dict[str, int]] = {}
    for subject, count in counts.items():
        try:
            model, version, lane, bucket = subjects.parse_share(subject)
        except ValueError:
            continue
        found.setdefault((model, version, lane), {})[bucket] = count
    return found


def affinity_hit_rate(workers: list[WorkerStatus]) -> float | None:
    """Home share of what the workers took from affinity buckets; None if they took nothing."""
    home = sum(w.affinity_home or 0 for w in workers)
    taken = home + sum(w.affinity_stolen or 0 for w in workers)
    return home / taken if taken else None


def estimated_wait_s(workers: list[WorkerStatus], queued: int, in_flight: int) -> float | None:
    """How long a request sent now would wait for a slot; None if no worker serves the model."""
    capacity = sum(w.capacity for w in workers)
    if not capacity:
        return None
    times = [w.avg_service_ms for w in workers if w.avg_service_ms]
    service_s = (sum(times) / len(times) / 1000) if times else 0.0
    # Everything ahead must clear the model's slots first.
    return (queued + max(0, in_flight - capacity)) / capacity * service_s


async def capacity_view(
    js: JetStreamContext, subjects: Subjects, registry: KeyValue, config: ModelbusConfig
) -> list[ModelCapacity]:
    workers = await live_workers(registry)
    staged = staged_by_queue(subjects, await staged_counts(js, subjects))
    view = []
    for model in config.models:
        for version in model.version_names:
            mine = [w for w in workers if w.model == model.name and w.version == version]
            queued = in_flight = redelivered = 0
            for _, info in await lane_consumers(js, subjects, model.name, version, model.affinity_buckets):
                queued += info.num_pending or 0
                in_flight += info.num_ack_pending or 0
                redelivered += info.num_redelivered or 0
            shares: dict[str, int] = {}
            for lane in Lane:
                for bucket, count in staged.get((model.name, version, lane), {}).items():
                    shares[bucket] = shares.get(bucket, 0) + count
            waiting = sum(shares.values())
            queued += waiting
            capacity = sum(w.capacity for w in mine)
            estimate = estimated_wait_s(mine, queued, in_flight)
            view.append(
                ModelCapacity(
                    model=model.name,
                    version=version,
                    workers=len(mine),
                    capacity=capacity,
                    free_slots=sum(w.free_slots for w in mine),
                    queued=queued,
                    in_flight=in_flight,
                    redelivered=redelivered,
                    estimated_wait_s=estimate,
                    staged=waiting,
                    shares=[ConsumerShare(consumer=c, queued=n) for c, n in sorted(shares.items())],
                    affinity_hit_rate=affinity_hit_rate(mine),
                )
            )
    return view


def share_rows(
    staged: list[ConsumerShare], served: dict[str, float], config: ModelbusConfig
) -> list[ConsumerShare]:
    """Staged counts per fair-share bucket joined with served shares per consumer (summed into
    their buckets): one row per bucket that has work staged or was served in the last minute."""
    rows = {row.consumer: row.model_copy() for row in staged}
    for consumer, share in served.items():
        bucket = config.share_bucket(consumer) if consumer else "?"
        row = rows.setdefault(bucket, ConsumerShare(consumer=bucket, queued=0))
        row.served_share = (row.served_share or 0.0) + share
    return sorted(rows.values(), key=lambda r: r.consumer)
