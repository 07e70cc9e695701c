"""The dispatcher process: keeps the topology in place, dead-letters exhausted requests and, with a
database configured, runs the audit sink. Several replicas are safe: they share durable consumers."""

from __future__ import annotations

import asyncio
import logging

from dispatcher.audit.sink import AuditSink
from dispatcher.audit.store import AuditStore
from dispatcher.connection import connect, supports_msg_ttl
from dispatcher.db.engine import create_engine
from dispatcher.db.migrate import upgrade_async
from dispatcher.dead_letters import DeadLetterer
from dispatcher.settings import BusSettings
from dispatcher.subjects import Subjects
from dispatcher.topology import ensure_consumer, ensure_streams
from schemas.config import ModelbusConfig

log = logging.getLogger(__name__)


async def run_dispatcher(settings: BusSettings, config: ModelbusConfig, stop: asyncio.Event) -> None:
    subjects = Subjects(settings.namespace)
    nc = await connect(settings, name="modelbus-dispatcher")
    engine = None
    tasks: list[asyncio.Task[None]] = []
    try:
        js = nc.jetstream()
        await ensure_streams(js, subjects, settings, nc.max_payload, supports_msg_ttl(nc))
        for model in config.models:
            await ensure_consumer(js, subjects, settings, model.name)
        await DeadLetterer(nc, subjects).start()
        if settings.database_url:
            await upgrade_async(settings.database_url)
            engine = create_engine(settings.database_url)
            sink = AuditSink(nc, subjects, AuditStore(engine))
            tasks.append(asyncio.create_task(sink.run(stop)))
        else:
            log.warning("no MODELBUS_DATABASE_URL: audit events stay queued in JetStream")
        log.info("dispatcher running (namespace %s)", settings.namespace)
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if engine is not None:
            await engine.dispose()
        await nc.drain()
