"""JetStream topology, created idempotently by every process at start-up.

One work-queue stream holds all requests (`<ns>.req.>`); each (model, version, lane) has one durable
pull consumer that all workers of that model share. Work-queue retention deletes a message once a
worker acks it, and `discard=new` makes a full stream refuse new requests instead of silently
evicting accepted ones.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

from nats.js import JetStreamContext, api
from nats.js.errors import APIError, BadRequestError, NotFoundError
from nats.js.kv import KeyValue

from dispatcher.bus.bus_settings import BusSettings
from dispatcher.bus.subjects import Subjects
from schemas.batches import COMPLETION_WINDOW_S
from schemas.config import ModelbusConfig
from schemas.envelope import Lane

log = logging.getLogger(__name__)

_DEAD_LETTER_MAX_AGE_S = 14 * 24 * 3600
# JSStreamInvalidConfigF: an update that cannot apply in place (storage, retention to or from a work
# queue). nats-server 2.15 sends it with code 500, not 400 (tests/unit/dispatcher/test_topology.py).
_CANNOT_UPDATE = 10052
# How long the collector may be away before undelivered audit events and task replies expire: a
# week covers a Postgres outage over a long weekend with margin, and task records live as long.
_OUTAGE_BUFFER_S = 7 * 24 * 3600
# A webhook not delivered within a week is dead-lettered by age: its receiver is gone, not slow.
_WEBHOOK_MAX_AGE_S = 7 * 24 * 3600


def request_stream_config(
    subjects: Subjects, settings: BusSettings, max_msg_size: int, msg_ttl: bool
) -> api.StreamConfig:
    return api.StreamConfig(
        name=subjects.request_stream,
        description="Modelbus inference requests (work queue)",
        subjects=[subjects.all_requests],
        retention=api.RetentionPolicy.WORK_QUEUE,
        storage=api.StorageType.FILE,
        discard=api.DiscardPolicy.NEW,
        max_age=settings.request_stream_max_age_s,
        max_bytes=settings.request_stream_max_bytes,
        max_msgs=settings.request_stream_max_msgs,
        max_msg_size=max_msg_size,
        duplicate_window=settings.duplicate_window_s,
        num_replicas=settings.stream_replicas,
        # Per-message TTL lets a request leave the stream when its deadline passes (server 2.11+).
        allow_msg_ttl=True if msg_ttl else None,
    )


def share_stream_config(
    subjects: Subjects, settings: BusSettings, max_msg_size: int, msg_ttl: bool
) -> api.StreamConfig:
    """Requests waiting for their fair share, one subject per (model, version, lane, consumer), with
    the request stream's limits and deduplication.

    A work queue like the request stream: the share feeder pulls each subject through its own
    consumer, republishes to the request stream under the same `Nats-Msg-Id` and then acks
    (dispatcher/scheduling/fair_share.py), so what is left here is exactly what still waits for its share.
    """
    return dataclasses.replace(
        request_stream_config(subjects, settings, max_msg_size, msg_ttl),
        name=subjects.share_stream,
        description="Modelbus requests waiting for their consumer's fair share",
        subjects=[subjects.all_shares],
    )


def dead_letter_stream_config(subjects: Subjects, settings: BusSettings) -> api.StreamConfig:
    return api.StreamConfig(
        name=subjects.dead_letter_stream,
        description="Modelbus requests that exhausted their deliveries",
        subjects=[subjects.all_dead_letters],
        retention=api.RetentionPolicy.LIMITS,
        storage=api.StorageType.FILE,
        max_age=_DEAD_LETTER_MAX_AGE_S,
        max_bytes=settings.dead_letter_max_bytes,
        num_replicas=settings.stream_replicas,
    )


def consumer_config(
    subjects: Subjects, settings: BusSettings, model: str, version: str, lane: Lane
) -> api.ConsumerConfig:
    name = subjects.consumer(model, version, lane)
    return api.ConsumerConfig(
        name=name,
        durable_name=name,
        description=f"workers of {model!r} version {version!r}, lane {lane.value}",
        filter_subject=subjects.request(model, version, lane),
        deliver_policy=api.DeliverPolicy.ALL,
        ack_policy=api.AckPolicy.EXPLICIT,
        ack_wait=settings.ack_wait_s,
        max_deliver=settings.max_deliver,
        max_ack_pending=settings.max_ack_pending,
        max_waiting=4096,
    )


def affinity_consumer_config(
    subjects: Subjects, settings: BusSettings, model: str, version: str, bucket: int
) -> api.ConsumerConfig:
    """One prefix-affinity bucket of (model, version): the interactive lane's settings, its own filter."""
    name = subjects.affinity_consumer(model, version, bucket)
    return dataclasses.replace(
        consumer_config(subjects, settings, model, version, Lane.INTERACTIVE),
        name=name,
        durable_name=name,
        description=f"workers of {model!r} version {version!r}, affinity bucket {bucket}",
        filter_subject=subjects.affinity_request(model, version, bucket),
    )


def audit_stream_config(subjects: Subjects, settings: BusSettings) -> api.StreamConfig:
    """Audit events wait here until the sink has committed them to Postgres (work queue)."""
    return api.StreamConfig(
        name=subjects.audit_stream,
        description="Modelbus audit events on their way to Postgres",
        subjects=[subjects.all_audit],
        retention=api.RetentionPolicy.WORK_QUEUE,
        storage=api.StorageType.FILE,
        # A week of Postgres outage is absorbed; beyond max_bytes publishers get errors, not loss.
        max_age=_OUTAGE_BUFFER_S,
        max_bytes=settings.audit_stream_max_bytes,
        discard=api.DiscardPolicy.NEW,
        duplicate_window=settings.duplicate_window_s,
        num_replicas=settings.stream_replicas,
    )


def audit_sink_consumer_config(subjects: Subjects) -> api.ConsumerConfig:
    return api.ConsumerConfig(
        durable_name=subjects.audit_sink_consumer,
        description="writes audit events to Postgres; acks after commit",
        ack_policy=api.AckPolicy.EXPLICIT,
        ack_wait=60,
        max_deliver=-1,  # never give up on an audit event
        max_ack_pending=50_000,
    )


def task_reply_stream_config(subjects: Subjects, settings: BusSettings) -> api.StreamConfig:
    """Reply frames of async tasks, kept until the collector has recorded the outcome."""
    return api.StreamConfig(
        name=subjects.task_reply_stream,
        description="Modelbus async task replies",
        subjects=[subjects.all_task_replies],
        retention=api.RetentionPolicy.WORK_QUEUE,
        storage=api.StorageType.FILE,
        max_age=_OUTAGE_BUFFER_S,
        max_bytes=settings.request_stream_max_bytes,
        num_replicas=settings.stream_replicas,
    )


def task_collector_consumer_config(subjects: Subjects) -> api.ConsumerConfig:
    return api.ConsumerConfig(
        durable_name=subjects.task_collector_consumer,
        description="records async task outcomes; acks after they are stored",
        ack_policy=api.AckPolicy.EXPLICIT,
        ack_wait=120,
        max_deliver=-1,
        max_ack_pending=10_000,
    )


def webhook_stream_config(subjects: Subjects, settings: BusSettings) -> api.StreamConfig:
    """Webhooks of finished tasks, kept until delivered or dead-lettered (a work queue)."""
    return api.StreamConfig(
        name=subjects.webhook_stream,
        description="Modelbus task webhooks waiting for delivery",
        subjects=[subjects.all_webhooks],
        retention=api.RetentionPolicy.WORK_QUEUE,
        storage=api.StorageType.FILE,
        max_age=_WEBHOOK_MAX_AGE_S,
        max_bytes=settings.dead_letter_max_bytes,
        # A collector replaying a final frame queues the same webhook again: one message per task.
        duplicate_window=settings.duplicate_window_s,
        num_replicas=settings.stream_replicas,
    )


def webhook_consumer_config(subjects: Subjects, settings: BusSettings) -> api.ConsumerConfig:
    return api.ConsumerConfig(
        durable_name=subjects.webhook_consumer,
        description="delivers task webhooks; acks once delivered or dead-lettered and recorded",
        ack_policy=api.AckPolicy.EXPLICIT,
        # The service sends in-progress acks while an attempt waits or runs; a dead service's webhooks
        # come back to another replica (or the restarted one) after this.
        ack_wait=settings.webhook_ack_wait_s,
        max_deliver=-1,  # attempts are counted on the task record, and bounded there
        max_ack_pending=10_000,
    )


def batch_line_stream_config(subjects: Subjects, settings: BusSettings) -> api.StreamConfig:
    """Batch lines between batch creation and their admission (a work queue: gone once admitted)."""
    return api.StreamConfig(
        name=subjects.batch_line_stream,
        description="Modelbus batch lines waiting for admission",
        subjects=[subjects.all_batch_lines],
        retention=api.RetentionPolicy.WORK_QUEUE,
        storage=api.StorageType.FILE,
        discard=api.DiscardPolicy.NEW,
        # A line still here after its batch's window is past use; the feeder fails it before that.
        max_age=COMPLETION_WINDOW_S + 3600,
        max_bytes=settings.request_stream_max_bytes,
        duplicate_window=settings.duplicate_window_s,
        num_replicas=settings.stream_replicas,
    )


def batch_feeder_consumer_config(subjects: Subjects) -> api.ConsumerConfig:
    return api.ConsumerConfig(
        durable_name=subjects.batch_feeder_consumer,
        description="admits batch lines and queues them on the batch lane; acks once queued or refused",
        ack_policy=api.AckPolicy.EXPLICIT,
        ack_wait=60,
        max_deliver=-1,  # a line waits out rate limits by being put back; it is never dropped
        max_ack_pending=1024,
    )


async def ensure_bucket(
    js: JetStreamContext,
    settings: BusSettings,
    name: str,
    description: str,
    history: int = 1,
    ttl_s: float | None = None,
    in_memory: bool = False,
    max_bytes: int | None = None,
) -> KeyValue:
    """A KV bucket with the gateway's replica count; creating an existing one is harmless."""
    if not settings.manage_topology:
        return await _wait_for_bucket(js, settings, name)
    return await js.create_key_value(
        api.KeyValueConfig(
            bucket=name,
            description=description,
            history=history,
            ttl=ttl_s,
            storage=api.StorageType.MEMORY if in_memory else api.StorageType.FILE,
            replicas=settings.stream_replicas,
            max_bytes=max_bytes,
        )
    )


async def ensure_task_bucket(js: JetStreamContext, subjects: Subjects, settings: BusSettings) -> KeyValue:
    """Task status by id, readable from any ingress; entries expire after a week."""
    return await ensure_bucket(
        js,
        settings,
        subjects.task_bucket,
        "Modelbus async task status and small results",
        ttl_s=_OUTAGE_BUFFER_S,
    )


async def _wait_for_bucket(js: JetStreamContext, settings: BusSettings, name: str) -> KeyValue:
    """A bucket someone else creates (the dispatcher); processes may start before it has."""
    deadline = asyncio.get_running_loop().time() + settings.connect_wait_s
    while True:
        try:
            return await js.key_value(name)
        except NotFoundError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            log.warning("waiting for bucket %s (created by the dispatcher)", name)
            await asyncio.sleep(1.0)


async def _ensure_stream(js: JetStreamContext, config: api.StreamConfig) -> None:
    assert config.name is not None
    try:
        await js.stream_info(config.name)
    except NotFoundError:
        try:
            await js.add_stream(config)
            log.info("created stream %s", config.name)
            return
        except BadRequestError:
            pass  # another process created it between our two calls
    try:
        await js.update_stream(config)
    except APIError as exc:
        if not isinstance(exc, BadRequestError) and exc.err_code != _CANNOT_UPDATE:
            raise
        # Some settings (retention, storage) cannot change in place; keep serving on the old ones.
        log.warning("stream %s kept its existing configuration: %s", config.name, exc.description)


async def ensure_streams(
    js: JetStreamContext, subjects: Subjects, settings: BusSettings, max_msg_size: int, msg_ttl: bool
) -> None:
    if not settings.manage_topology:
        return
    await _ensure_stream(js, request_stream_config(subjects, settings, max_msg_size, msg_ttl))
    await _ensure_stream(js, share_stream_config(subjects, settings, max_msg_size, msg_ttl))
    await _ensure_stream(js, dead_letter_stream_config(subjects, settings))
    await _ensure_stream(js, audit_stream_config(subjects, settings))
    await _ensure_stream(js, task_reply_stream_config(subjects, settings))
    await _ensure_stream(js, batch_line_stream_config(subjects, settings))
    await _ensure_stream(js, webhook_stream_config(subjects, settings))


async def ensure_consumer(
    js: JetStreamContext,
    subjects: Subjects,
    settings: BusSettings,
    model: str,
    version: str = "default",
    lane: Lane = Lane.INTERACTIVE,
) -> str:
    """Create or update the shared durable consumer of one (model, version, lane); return its name."""
    config = consumer_config(subjects, settings, model, version, lane)
    assert config.durable_name is not None
    if not settings.manage_topology:
        return config.durable_name
    # The server's create call is create-or-update: an existing consumer takes the new settings.
    await js.add_consumer(subjects.request_stream, config)
    return config.durable_name


async def ensure_affinity_consumers(
    js: JetStreamContext, subjects: Subjects, settings: BusSettings, model: str, version: str, buckets: int
) -> list[str]:
    """Create or update the consumer of every affinity bucket of one (model, version); their names."""
    names = []
    for bucket in range(buckets):
        config = affinity_consumer_config(subjects, settings, model, version, bucket)
        assert config.durable_name is not None
        if settings.manage_topology:
            await js.add_consumer(subjects.request_stream, config)
        names.append(config.durable_name)
    return names


async def ensure_model_consumers(
    js: JetStreamContext, subjects: Subjects, settings: BusSettings, config: ModelbusConfig
) -> None:
    """Every lane's consumer of every configured model, so queue depth is visible before any worker."""
    if not settings.manage_topology:
        return
    for model in config.models:
        for version in model.version_names:
            for lane in Lane:
                await ensure_consumer(js, subjects, settings, model.name, version, lane)
            if model.affinity is not None:
                buckets = model.affinity.buckets
                await ensure_affinity_consumers(js, subjects, settings, model.name, version, buckets)
