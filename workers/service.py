"""One worker process: connect, declare its consumer, pull by capacity, drain on stop."""

from __future__ import annotations

import asyncio
import logging

from dispatcher.connection import connect, supports_msg_ttl
from dispatcher.subjects import Subjects
from dispatcher.topology import ensure_consumer, ensure_streams
from schemas.config import ModelConfig
from schemas.envelope import Lane
from workers.backends import build_backend
from workers.cancellations import Cancellations
from workers.pull_loop import CapacityPuller
from workers.runner import RequestRunner
from workers.settings import WorkerSettings

log = logging.getLogger(__name__)


class Worker:
    def __init__(self, settings: WorkerSettings, model: ModelConfig) -> None:
        self.settings = settings
        self.model = model
        self.capacity = settings.max_concurrency or model.max_concurrency
        self.subjects = Subjects(settings.namespace)
        self.puller: CapacityPuller | None = None

    async def run(self, stop: asyncio.Event) -> None:
        settings = self.settings
        nc = await connect(settings, name=f"modelbus-worker {settings.worker_id}")
        backend = build_backend(self.model.backend, self.model.name, self.capacity)
        try:
            js = nc.jetstream()
            await ensure_streams(js, self.subjects, settings, nc.max_payload, supports_msg_ttl(nc))
            consumer = await ensure_consumer(
                js, self.subjects, settings, self.model.name, settings.version, Lane.INTERACTIVE
            )
            batch_consumer = await ensure_consumer(
                js, self.subjects, settings, self.model.name, settings.version, Lane.BATCH
            )
            cancellations = Cancellations(nc, self.subjects)
            await cancellations.start()
            runner = RequestRunner(nc, settings, backend, cancellations)
            self.puller = CapacityPuller(
                nc,
                self.subjects.request_stream,
                consumer,
                self.capacity,
                runner.handle,
                batch_consumer=batch_consumer,
            )
            log.info(
                "worker %s serving %r with %d slots (%s)",
                settings.worker_id,
                self.model.name,
                self.capacity,
                backend.description,
            )
            pulling = asyncio.create_task(self.puller.run())
            keeping_alive = asyncio.create_task(runner.keep_alive())
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait({pulling, stopped}, return_when=asyncio.FIRST_COMPLETED)
            self.puller.stop()
            try:
                # Let in-flight work finish; whatever is left is handed back for redelivery.
                async with asyncio.timeout(settings.drain_timeout_s):
                    await asyncio.shield(pulling)
            except TimeoutError:
                pulling.cancel()
                await asyncio.gather(pulling, return_exceptions=True)
            for task in (stopped, keeping_alive):
                task.cancel()
            await asyncio.gather(stopped, keeping_alive, return_exceptions=True)
        finally:
            await backend.aclose()
            await nc.drain()
