"""The ingress ASGI application: clients are created in the lifespan and kept on `app.state`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from dispatcher.audit.publisher import AuditPublisher
from dispatcher.batches import BatchStore
from dispatcher.client import BusClient
from dispatcher.config_file import load_config
from dispatcher.connection import connect, supports_msg_ttl
from dispatcher.db.engine import create_engine
from dispatcher.subjects import Subjects
from dispatcher.tasks.store import TaskStore
from dispatcher.topology import ensure_consumer, ensure_streams, ensure_task_bucket
from ingress.audit import AuditMiddleware
from ingress.auth import KeyStore
from ingress.batches import BatchIntake
from ingress.catalog import Catalog
from ingress.errors import install_error_handlers
from ingress.relay import Relay
from ingress.routes import admin, batches, files, health, inference, models, tasks
from ingress.settings import IngressSettings
from ingress.tasks import TaskIntake
from schemas.config import ModelbusConfig
from schemas.envelope import Lane

log = logging.getLogger(__name__)


def create_app(settings: IngressSettings, config: ModelbusConfig | None = None) -> FastAPI:
    config = config if config is not None else load_config(settings.config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        subjects = Subjects(settings.namespace)
        nc = await connect(settings, name=f"modelbus-ingress {settings.ingress_id}")
        try:
            js = nc.jetstream()
            msg_ttl = supports_msg_ttl(nc)
            await ensure_streams(js, subjects, settings, nc.max_payload, msg_ttl)
            # Consumers exist before any worker does, so queue depth is visible from the start.
            for model in config.models:
                for lane in Lane:
                    await ensure_consumer(js, subjects, settings, model.name, lane=lane)
            bus = BusClient(nc, subjects, settings, settings.ingress_id, msg_ttl)
            await bus.start()
            audit = AuditPublisher(js, subjects, f"ingress-{settings.ingress_id}")
            publishing = asyncio.create_task(audit.run())
            app.state.audit = audit
            catalog = Catalog(config)
            engine = create_engine(settings.database_url) if settings.database_url else None
            task_store = TaskStore(await ensure_task_bucket(js, subjects, settings), engine)
            app.state.tasks = TaskIntake(bus, task_store, subjects, settings.task_timeout_s)
            app.state.nc = nc
            app.state.catalog = catalog
            app.state.keys = KeyStore(config)
            app.state.relay = Relay(bus, catalog, settings, app.state.tasks)
            app.state.engine = engine
            app.state.batches = BatchStore(engine) if engine is not None else None
            app.state.batch_intake = (
                BatchIntake(app.state.batches, task_store, bus, catalog, subjects)
                if engine is not None
                else None
            )
            log.info("ingress %s ready with %d models", settings.ingress_id, len(config.models))
            try:
                yield
            finally:
                publishing.cancel()
                await asyncio.gather(publishing, return_exceptions=True)
                await audit.flush(timeout=5.0)
                if engine is not None:
                    await engine.dispose()
        finally:
            await nc.drain()

    app = FastAPI(title="Modelbus", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None)
    install_error_handlers(app)
    app.add_middleware(AuditMiddleware)
    app.include_router(inference.router)
    app.include_router(models.router)
    app.include_router(tasks.router)
    app.include_router(files.router)
    app.include_router(batches.router)
    app.include_router(admin.router)
    app.include_router(health.router)
    return app
