"""The dispatcher process: keeps the topology in place, dead-letters exhausted requests and, with a
database configured, runs the audit sink. Several replicas are safe: they share durable consumers."""

from __future__ import annotations

import asyncio
import logging

from nats.js import JetStreamContext
from prometheus_client import start_http_server

from dispatcher.api_keys import KeyRegistry
from dispatcher.audit.publisher import AuditPublisher
from dispatcher.audit.sink import AuditSink
from dispatcher.audit.store import AuditStore
from dispatcher.batches import BatchStore
from dispatcher.capacity import open_registry
from dispatcher.config_store import ConfigStore, load_initial
from dispatcher.connection import connect, supports_msg_ttl
from dispatcher.db.engine import create_engine
from dispatcher.db.migrate import upgrade_async
from dispatcher.dead_letters import DeadLetterer
from dispatcher.quotas import QuotaLedger
from dispatcher.response_cache import ResponseCache
from dispatcher.settings import BusSettings
from dispatcher.subjects import Subjects
from dispatcher.tasks.collector import TaskCollector
from dispatcher.tasks.store import TaskStore
from dispatcher.tasks.webhooks import WebhookSender
from dispatcher.telemetry import metrics
from dispatcher.telemetry.lag import refresh_lag
from dispatcher.telemetry.metrics import watch_config, watch_nats
from dispatcher.telemetry.tracing import setup_tracing, shutdown_tracing
from dispatcher.topology import ensure_model_consumers, ensure_streams, ensure_task_bucket
from schemas.config import ModelbusConfig

log = logging.getLogger(__name__)


async def run_dispatcher(settings: BusSettings, config: ModelbusConfig, stop: asyncio.Event) -> None:
    subjects = Subjects(settings.namespace)
    setup_tracing("modelbus-dispatcher", settings.otlp_endpoint, settings.trace_file)
    if settings.metrics_port is not None:
        start_http_server(settings.metrics_port, addr=settings.metrics_host)
    nc = await connect(settings, name="modelbus-dispatcher")
    watch_nats(nc, "dispatcher")
    engine = None
    audit: AuditPublisher | None = None
    webhooks: WebhookSender | None = None
    tasks: list[asyncio.Task[None]] = []
    publishers: list[asyncio.Task[None]] = []
    try:
        js = nc.jetstream()
        await ensure_streams(js, subjects, settings, nc.max_payload, supports_msg_ttl(nc))
        await DeadLetterer(nc, subjects).start()
        if settings.database_url:
            await upgrade_async(settings.database_url)
            engine = create_engine(settings.database_url)
            sink = AuditSink(nc, subjects, AuditStore(engine))
            tasks.append(asyncio.create_task(sink.run(stop)))
        else:
            log.warning("no MODELBUS_DATABASE_URL: audit events stay queued in JetStream")
        audit = AuditPublisher(js, subjects, "dispatcher")
        webhooks = WebhookSender(settings.webhook_secret)
        task_store = TaskStore(await ensure_task_bucket(js, subjects, settings), engine)
        # Ingresses and workers with restricted NATS users cannot create buckets; they find these.
        await open_registry(js, subjects, settings)
        await ResponseCache.open(js, subjects, settings)
        await KeyRegistry.open(js, subjects, settings)
        await QuotaLedger.open(nc, subjects, settings)
        batches = BatchStore(engine) if engine is not None else None
        collector = TaskCollector(nc, subjects, task_store, audit, webhooks, batches)
        publishers.append(asyncio.create_task(audit.run()))
        tasks.append(asyncio.create_task(collector.run(stop)))
        config_store = await ConfigStore.open(js, subjects, settings)
        current, _ = await load_initial(config_store, config)
        await ensure_model_consumers(js, subjects, settings, current)

        latest = [current]

        async def on_change(new: ModelbusConfig, revision: int) -> None:
            await ensure_model_consumers(js, subjects, settings, new)
            latest[0] = new

        publishers.append(asyncio.create_task(config_store.follow(on_change)))
        watch_config(config_store, "dispatcher")
        registry = await open_registry(js, subjects, settings)
        publishers.append(asyncio.create_task(refresh_lag(js, subjects, registry, lambda: latest[0])))
        publishers.append(asyncio.create_task(_refresh_audit_backlog(js, subjects)))
        log.info("dispatcher running (namespace %s)", settings.namespace)
        await stop.wait()
    finally:
        # The sink and the collector finish their current batch and stop by themselves (they
        # watch `stop` between fetches); the publisher is only ever waiting, so it is cancelled.
        stop.set()
        for task in publishers:
            task.cancel()
        if tasks:
            _, stuck = await asyncio.wait(tasks + publishers, timeout=10)
            for task in stuck:
                task.cancel()
            await asyncio.gather(*tasks, *publishers, return_exceptions=True)
        if audit is not None:
            await audit.flush(timeout=5.0)
        if webhooks is not None:
            await webhooks.aclose()
        if engine is not None:
            await engine.dispose()
        # Everything in flight has been awaited above, so a flush (acks reach the server) and a
        # close suffice; nats-py's drain waits on pull subscriptions' leftover status messages.
        try:
            await nc.flush(timeout=5)
        except Exception as exc:  # noqa: BLE001 - shutting down anyway
            log.warning("final flush failed: %s", exc)
        await nc.close()
        shutdown_tracing()


async def _refresh_audit_backlog(js: JetStreamContext, subjects: Subjects, every_s: float = 5.0) -> None:
    """`modelbus_audit_sink_pending`: audit events waiting for Postgres (the AuditSinkBehind alert)."""
    while True:
        try:
            info = await js.consumer_info(subjects.audit_stream, subjects.audit_sink_consumer)
            metrics.AUDIT_SINK_PENDING.set((info.num_pending or 0) + (info.num_ack_pending or 0))
        except Exception as exc:  # noqa: BLE001 - no sink yet (no database) or NATS away: retry later
            log.debug("audit backlog unknown: %s", exc)
        await asyncio.sleep(every_s)
