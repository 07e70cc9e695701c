"""The dispatcher process: keeps the topology in place, dead-letters exhausted requests, records task
outcomes, feeds batch lines through admission and, with a database configured, runs the audit sink.
Several replicas are safe: they share durable consumers."""

from __future__ import annotations

import asyncio
import logging

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from dispatcher.admission.classifier import InjectionClassifier
from dispatcher.admission.guardrails import Guardrails
from dispatcher.admission.live_config import LiveConfig
from dispatcher.admission.pipeline import Admission
from dispatcher.admission.quota_gate import QuotaGate
from dispatcher.audit.checkpoints import Checkpointer, CheckpointLog, signing_key
from dispatcher.audit.ledger import AuditStore
from dispatcher.audit.publisher import AuditPublisher
from dispatcher.audit.sink import AuditSink
from dispatcher.bus.bus_settings import BusSettings
from dispatcher.bus.client import BusClient
from dispatcher.bus.connection import supports_msg_ttl
from dispatcher.bus.dead_letters import DeadLetterer
from dispatcher.bus.subjects import Subjects
from dispatcher.bus.topology import ensure_model_consumers, ensure_streams, ensure_task_bucket
from dispatcher.caching import semantic_cache
from dispatcher.caching.response_cache import ResponseCache
from dispatcher.caching.stored_responses import ResponseStore
from dispatcher.config.config_store import ConfigStore, load_initial
from dispatcher.jobs.batch_feeder import BatchFeeder
from dispatcher.jobs.batch_store import BatchStore
from dispatcher.jobs.task_collector import TaskCollector
from dispatcher.jobs.task_recorder import TaskRecorder
from dispatcher.jobs.task_store import TaskStore
from dispatcher.policy.api_keys import KeyRegistry
from dispatcher.policy.quotas import Limiter, QuotaLedger
from dispatcher.process.runtime import process_runtime
from dispatcher.scheduling.affinity import envelope_bucket
from dispatcher.scheduling.capacity_view import open_registry
from dispatcher.scheduling.fair_share import open_lease_bucket
from dispatcher.store.database import create_engine
from dispatcher.store.migrate import upgrade_async
from dispatcher.telemetry import metrics
from dispatcher.telemetry.lag import refresh_lag
from dispatcher.telemetry.metrics import watch_config
from dispatcher.webhooks.addresses import WebhookPolicy
from dispatcher.webhooks.delivery import WebhookService
from dispatcher.webhooks.queue import WebhookQueue
from dispatcher.webhooks.sender import WebhookSender
from schemas.config import ModelbusConfig

log = logging.getLogger(__name__)

# Replicas share one reply inbox for their own model calls (the injection classifier).
_BUS_ID = "dispatcher"


async def run_dispatcher(settings: BusSettings, config: ModelbusConfig, stop: asyncio.Event) -> None:
    async with process_runtime(settings, "dispatcher", "modelbus-dispatcher", grace_s=10) as runtime:
        nc, js, subjects = runtime.nc, runtime.js, runtime.subjects
        supervisor, cleanup = runtime.supervisor, runtime.cleanup
        stopping = supervisor.stopping
        msg_ttl = supports_msg_ttl(nc)
        await ensure_streams(js, subjects, settings, nc.max_payload, msg_ttl)
        await DeadLetterer(nc, subjects).start()
        engine = None
        if settings.database_url:
            await upgrade_async(settings.database_url)
            engine = create_engine(settings.database_url)
            cleanup.push_async_callback(engine.dispose)
            checkpointer = await _checkpointer(js, subjects, settings)
            sink = AuditSink(nc, subjects, AuditStore(engine), checkpointer, idle_pull_s=settings.idle_pull_s)
            supervisor.supervise("audit-sink", lambda: sink.run(stopping), graceful=True)
        else:
            log.warning("no MODELBUS_DATABASE_URL: audit events stay queued in JetStream")
        audit = AuditPublisher(nc, subjects, "dispatcher")
        cleanup.push_async_callback(audit.flush, 5.0)
        task_store = TaskStore(await ensure_task_bucket(js, subjects, settings), engine)
        # Ingresses and workers with restricted NATS users cannot create buckets; they find these.
        registry = await open_registry(js, subjects, settings)
        await ResponseCache.open(js, subjects, settings)
        responses = await ResponseStore.open(js, subjects, settings, nc.max_payload)
        await semantic_cache.open_bucket(js, subjects, settings)
        await open_lease_bucket(js, subjects, settings)
        keys = await KeyRegistry.open(js, subjects, settings)
        ledger = await QuotaLedger.open(nc, subjects, settings)
        cleanup.push_async_callback(ledger.drain)
        batches = BatchStore(engine) if engine is not None else None
        recorder = TaskRecorder(task_store, audit, WebhookQueue(js, subjects), batches)
        collector = TaskCollector(nc, subjects, task_store, recorder, settings.idle_pull_s)
        supervisor.supervise("audit-publisher", audit.run)
        supervisor.supervise("task-collector", lambda: collector.run(stopping), graceful=True)
        webhooks = _webhook_service(runtime.nc, subjects, task_store, recorder, audit, settings)
        cleanup.push_async_callback(webhooks.aclose)
        supervisor.supervise("webhook-delivery", lambda: webhooks.run(stopping), graceful=True)

        config_store = await ConfigStore.open(js, subjects, settings)
        current, revision = await load_initial(config_store, config)
        await ensure_model_consumers(js, subjects, settings, current)
        live = LiveConfig(current, revision)

        async def on_change(new: ModelbusConfig, number: int) -> None:
            await ensure_model_consumers(js, subjects, settings, new)
            live.swap(new, number)

        supervisor.supervise("config-watch", lambda: config_store.follow(on_change))
        watch_config(config_store, "dispatcher")
        if batches is not None:
            bus = BusClient(
                nc,
                subjects,
                settings,
                _BUS_ID,
                msg_ttl,
                shared_inbox=True,
                affinity_bucket=lambda envelope: envelope_bucket(live.config, envelope),
            )
            await bus.start()
            admission = Admission(
                live,
                Guardrails(InjectionClassifier(bus, live)),
                QuotaGate(Limiter(ledger, subjects), ledger),
                responses,
            )
            feeder = BatchFeeder(
                nc, subjects, admission, bus, task_store, recorder, batches, keys, settings.idle_pull_s
            )
            supervisor.supervise("batch-feeder", lambda: feeder.run(stopping), graceful=True)
        supervisor.supervise("lag-gauges", lambda: refresh_lag(js, subjects, registry, lambda: live.config))
        supervisor.supervise("audit-backlog", lambda: _refresh_audit_backlog(js, subjects))
        log.info("dispatcher running (namespace %s)", settings.namespace)
        await stop.wait()


def _webhook_service(
    nc: NATS,
    subjects: Subjects,
    store: TaskStore,
    recorder: TaskRecorder,
    audit: AuditPublisher,
    settings: BusSettings,
) -> WebhookService:
    policy = WebhookPolicy.build(settings.webhook_allow_list, settings.webhook_https_only)
    secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
    if secret is None:
        log.error("no MODELBUS_WEBHOOK_SECRET: task webhooks are not sent (never unsigned); set one")
    sender = WebhookSender(policy, secret, settings.webhook_timeout_s, settings.webhook_per_destination)
    return WebhookService(nc, subjects, store, recorder, audit, sender, policy, settings)


async def _checkpointer(
    js: JetStreamContext, subjects: Subjects, settings: BusSettings
) -> Checkpointer | None:
    if settings.audit_signing_key is None:
        log.warning(
            "no MODELBUS_AUDIT_SIGNING_KEY: audit checkpoints are not signed, and removal of the newest "
            "audit rows could not be detected"
        )
        return None
    key = signing_key(settings.audit_signing_key.get_secret_value())
    return Checkpointer(await CheckpointLog.open(js, subjects, settings), key)


async def _refresh_audit_backlog(js: JetStreamContext, subjects: Subjects, every_s: float = 5.0) -> None:
    """`modelbus_audit_sink_pending`: audit events waiting for Postgres (the AuditSinkBehind alert)."""
    while True:
        try:
            info = await js.consumer_info(subjects.audit_stream, subjects.audit_sink_consumer)
            metrics.AUDIT_SINK_PENDING.set((info.num_pending or 0) + (info.num_ack_pending or 0))
        except Exception as exc:  # noqa: BLE001 - no sink yet (no database) or NATS away: retry later
            log.debug("audit backlog unknown: %s", exc)
        await asyncio.sleep(every_s)
