"""The ingress ASGI application: its services are built in the lifespan (ingress/deps.py)."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute

from dispatcher.admission.classifier import InjectionClassifier
from dispatcher.admission.guardrails import Guardrails
from dispatcher.admission.live_config import LiveConfig
from dispatcher.admission.offload import Offload
from dispatcher.admission.pipeline import Admission
from dispatcher.admission.quota_gate import QuotaGate
from dispatcher.audit.publisher import AuditPublisher
from dispatcher.bus.client import BusClient
from dispatcher.bus.connection import supports_msg_ttl
from dispatcher.bus.topology import ensure_model_consumers, ensure_streams, ensure_task_bucket
from dispatcher.caching.response_cache import ResponseCache
from dispatcher.caching.semantic_cache import SemanticCache
from dispatcher.caching.stored_responses import ResponseStore
from dispatcher.config.config_file import load_config
from dispatcher.config.config_store import ConfigStore, load_initial
from dispatcher.guardrails.injection import prepare as prepare_injection_scan
from dispatcher.jobs.batch_store import BatchStore
from dispatcher.jobs.task_store import TaskStore
from dispatcher.policy.api_keys import KeyRegistry
from dispatcher.policy.quotas import Limiter, QuotaLedger
from dispatcher.process.runtime import Runtime, process_runtime
from dispatcher.scheduling.affinity import envelope_bucket
from dispatcher.scheduling.capacity_view import open_registry
from dispatcher.scheduling.fair_share import open_feeder
from dispatcher.store.database import create_engine
from dispatcher.telemetry.exposition import serve_metrics
from dispatcher.telemetry.lag import refresh_lag
from dispatcher.telemetry.metrics import watch, watch_config
from dispatcher.telemetry.traffic_window import TrafficWatch
from ingress.audit_events import AuditMiddleware
from ingress.batch_intake import BatchIntake
from ingress.degradation import Degradation
from ingress.deps import Services
from ingress.error_responses import install_error_handlers
from ingress.inference_edge import InferenceEdge
from ingress.ingress_settings import IngressSettings
from ingress.key_lookup import KeyRing
from ingress.model_health import ModelHealth
from ingress.oidc import OidcVerifier
from ingress.relay import Relay
from ingress.routes import (
    admin_routes,
    api_schema_routes,
    batches_routes,
    files_routes,
    health_routes,
    inference_routes,
    keys_routes,
    models_routes,
    ops_routes,
    responses_routes,
    tasks_routes,
)
from ingress.task_intake import TaskIntake
from schemas.config import ModelbusConfig
from schemas.endpoints import BY_PATH

log = logging.getLogger(__name__)


def create_app(settings: IngressSettings, config: ModelbusConfig | None = None) -> FastAPI:
    bootstrap = config if config is not None else load_config(settings.config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        name = f"modelbus-ingress {settings.ingress_id}"
        async with process_runtime(settings, "ingress", name, metrics_port=False) as runtime:
            app.state.services = await _build(settings, bootstrap, runtime)
            prepare_injection_scan()
            if settings.ingress_metrics_port is not None:
                stop = serve_metrics(
                    settings.metrics_host, settings.ingress_metrics_port, settings.metrics_token
                )
                runtime.cleanup.callback(stop)
            # Everything built at start-up lives for the whole process: freezing it keeps full garbage
            # collections from walking it (measured: 50-95 ms pauses at c=16 without, 2-13 ms with).
            gc.collect()
            gc.freeze()
            yield

    app = FastAPI(
        title="Modelbus",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,  # served by routes/api_schema_routes.py, which asks for a key
        # FastAPI's own instrumentation would add a server span and spans per dependency to every
        # request, probes included; the gateway records its own spans and metrics (ingress/audit_events.py,
        # ingress/request_telemetry.py) on the inference endpoints only, at a fraction of the cost.
        telemetry={
            "tracing": False,
            "metrics": False,
            "logs": False,
            "operation_spans": False,
            "auto_configure": False,
        },
    )
    routers = [
        m.router
        for m in (
            inference_routes,
            responses_routes,
            models_routes,
            tasks_routes,
            files_routes,
            batches_routes,
            admin_routes,
            keys_routes,
            ops_routes,
            health_routes,
            api_schema_routes,
        )
    ]
    app.openapi = lambda: api_schema_routes.document(app)  # type: ignore[method-assign]
    install_error_handlers(app, _client_api(routers))
    app.add_middleware(AuditMiddleware)
    for router in routers:
        app.include_router(router)
    return app


def create_edge(settings: IngressSettings, config: ModelbusConfig | None = None) -> InferenceEdge:
    """What the HTTP server runs: the app, with the inference endpoints served by the edge in front."""
    return InferenceEdge(create_app(settings, config))


def _client_api(routers: list[APIRouter]) -> list[str]:
    """Every route under /v1 and the tokenizer endpoints (not probes, metrics or admin)."""
    served = []
    for router in routers:
        for route in router.routes:
            if isinstance(route, APIRoute) and (route.path.startswith("/v1/") or route.path in BY_PATH):
                served += [f"{method} {route.path}" for method in sorted(route.methods or ())]
    return served


async def _build(settings: IngressSettings, bootstrap: ModelbusConfig, runtime: Runtime) -> Services:
    """Every service of one ingress, wired; background work handed to the runtime's supervisor."""
    nc, js, subjects = runtime.nc, runtime.js, runtime.subjects
    supervisor, cleanup = runtime.supervisor, runtime.cleanup
    msg_ttl = supports_msg_ttl(nc)
    await ensure_streams(js, subjects, settings, nc.max_payload, msg_ttl)

    config_store = await ConfigStore.open(js, subjects, settings)
    current, revision = await load_initial(config_store, bootstrap)
    await ensure_model_consumers(js, subjects, settings, current)
    live = LiveConfig(current, revision)
    key_ring = KeyRing(current)

    # Only the JWKS fetches use this session; it is idle unless OIDC issuers are configured.
    http = aiohttp.ClientSession()
    cleanup.push_async_callback(http.close)
    oidc = OidcVerifier(current.oidc, http)
    key_registry = await KeyRegistry.open(js, subjects, settings)
    key_ring.replace_issued({r.hash: r for r in await key_registry.list()})

    async def on_change(new: ModelbusConfig, number: int) -> None:
        await ensure_model_consumers(js, subjects, settings, new)
        oidc.reconfigure(new.oidc)
        key_ring.swap_config(new)
        live.swap(new, number)

    bus = BusClient(
        nc,
        subjects,
        settings,
        settings.ingress_id,
        msg_ttl,
        share_bucket=lambda c: live.config.share_bucket(c),
        affinity_bucket=lambda envelope: envelope_bucket(live.config, envelope),
    )
    await bus.start()
    audit = AuditPublisher(nc, subjects, f"ingress-{settings.ingress_id}")
    cleanup.push_async_callback(audit.flush, 5.0)
    engine = create_engine(settings.database_url) if settings.database_url else None
    if engine is not None:
        cleanup.push_async_callback(engine.dispose)
    task_store = TaskStore(await ensure_task_bucket(js, subjects, settings), engine)
    intake = TaskIntake(bus, task_store, subjects, settings.task_timeout_s, settings.duplicate_window_s)
    batch_store = BatchStore(engine) if engine is not None else None
    workers = await open_registry(js, subjects, settings)
    traffic = TrafficWatch(nc, subjects, lambda model: model in live.current.labels.models)
    if settings.nats_user is None:  # restricted users may not read audit events
        await traffic.start()
    watch_config(config_store, "ingress")
    health = ModelHealth(js, subjects, workers, live, stale_after_s=3 * settings.heartbeat_s)
    cache = await ResponseCache.open(js, subjects, settings)
    ledger = await QuotaLedger.open(nc, subjects, settings)
    cleanup.push_async_callback(ledger.drain)
    responses = await ResponseStore.open(js, subjects, settings, nc.max_payload)
    offload = Offload(settings.offload_processes, settings.offload_min_bytes)
    cleanup.callback(offload.close)
    offload.start()
    admission = Admission(
        live,
        Guardrails(InjectionClassifier(bus, live), offload),
        QuotaGate(Limiter(ledger, subjects), ledger),
        responses,
        health.estimated_wait_s,
        offload,
    )
    semantic = await SemanticCache.open(js, subjects, settings, bus, live)
    relay = Relay(bus, settings, admission, intake, Degradation(admission, health, intake, cache, semantic))

    supervisor.supervise("audit-publisher", audit.run)
    supervisor.supervise("config-watch", lambda: config_store.follow(on_change))
    supervisor.supervise("key-watch", lambda: key_registry.follow(key_ring.replace_issued))
    supervisor.supervise("worker-watch", health.watch_workers)
    supervisor.supervise("semantic-cache-watch", semantic.watch)
    supervisor.supervise("queue-depths", health.refresh_queues)
    supervisor.supervise("lag-gauges", lambda: refresh_lag(js, subjects, workers, lambda: live.config))
    if settings.fair_share:
        share_feeder = await open_feeder(
            nc,
            js,
            subjects,
            settings,
            lambda b: live.config.share_spec(b),
            workers,
            settings.ingress_id,
            buckets=lambda m: live.config.affinity_buckets(m),
        )
        supervisor.supervise("share-feeder", share_feeder.run)
        watch(share_feeder.metrics)
    log.info(
        "ingress %s ready: %d models, config revision %d", settings.ingress_id, len(current.models), revision
    )
    return Services(
        settings=settings,
        nc=nc,
        subjects=subjects,
        supervisor=supervisor,
        live=live,
        keys=key_ring,
        oidc=oidc,
        key_registry=key_registry,
        config_store=config_store,
        audit=audit,
        admission=admission,
        relay=relay,
        responses=responses,
        tasks=intake,
        workers=workers,
        traffic=traffic,
        engine=engine,
        batches=batch_store,
        batch_intake=(
            BatchIntake(batch_store, js, bus, live, subjects, settings.max_body_bytes, offload)
            if batch_store is not None
            else None
        ),
        offload=offload,
    )
