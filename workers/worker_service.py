"""One worker process: connect, declare its consumer, pull by capacity, drain on stop."""

from __future__ import annotations

import asyncio
import gc
import logging
import time

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from prometheus_client.core import GaugeMetricFamily, Metric

from dispatcher.bus.connection import api_prefix, jetstream, supports_msg_ttl
from dispatcher.bus.subjects import Subjects
from dispatcher.bus.topology import ensure_affinity_consumers, ensure_consumer, ensure_streams
from dispatcher.caching.stored_responses import ResponseStore
from dispatcher.config.config_store import ConfigStore, load_initial
from dispatcher.policy.quotas import QuotaLedger
from dispatcher.process.runtime import process_runtime
from dispatcher.process.supervisor import Supervisor
from dispatcher.scheduling.affinity import home_buckets
from dispatcher.scheduling.capacity_view import live_workers, open_registry
from dispatcher.telemetry.labels import MetricLabels, sanitize
from dispatcher.telemetry.metrics import watch, watch_config
from schemas.capacity import WorkerStatus
from schemas.config import ModelbusConfig
from schemas.envelope import Lane
from workers.affinity_puller import AffinityPuller
from workers.backends import Backend, build_backend
from workers.cancellations import Cancellations
from workers.pull_loop import CapacityPuller
from workers.runner import RequestRunner
from workers.worker_settings import WorkerSettings

log = logging.getLogger(__name__)


class Worker:
    def __init__(self, settings: WorkerSettings, model: str, bootstrap: ModelbusConfig) -> None:
        self.settings = settings
        self.model_name = model
        self.bootstrap = bootstrap
        self.subjects = Subjects(settings.namespace)
        self.puller: CapacityPuller | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop`; raises LookupError if the model is in no configuration."""
        settings = self.settings
        name = f"modelbus-worker {settings.worker_id}"
        async with process_runtime(settings, "worker", name) as runtime:
            nc, supervisor = runtime.nc, runtime.supervisor
            config_store = await ConfigStore.open(runtime.js, self.subjects, settings)
            config, _ = await load_initial(config_store, self.bootstrap)
            found = config.model(self.model_name)
            if found is None:
                raise LookupError(f"model {self.model_name!r} is in neither the applied config nor the file")
            deployment = found.deployment(settings.version)
            if deployment is None:
                raise LookupError(f"model {self.model_name!r} has no version {settings.version!r}")
            self.model = found
            self.labels = MetricLabels.of(config)
            self.backend_config, max_concurrency = deployment
            self.slots = settings.max_concurrency or max_concurrency  # of all this worker's processes
            self.capacity = self._share(self.slots)
            await self._serve(nc, config_store, supervisor, stop)

    def _share(self, slots: int) -> int:
        """This process's part of the worker's slots (all of them unless started with --processes)."""
        return max(1, len(self._part(slots)))

    def _part(self, slots: int) -> range:
        """The backend slots (numbered from 0) of this process's part: the parts split them evenly,
        the first ones taking one more when they do not divide."""
        parts, part = self.settings.capacity_parts, self.settings.capacity_part
        first = part * (slots // parts) + min(part, slots % parts)
        return range(first, first + slots // parts + (1 if part < slots % parts else 0))

    @property
    def _registry_key(self) -> str:
        return self.subjects.worker_key(self.model.name, self.settings.version, self.settings.worker_id)

    async def _heartbeat(self, registry: KeyValue, runner: RequestRunner, backend: str) -> None:
        assert self.puller is not None
        while True:
            status = WorkerStatus(
                worker=self.settings.worker_id,
                model=self.model.name,
                version=self.settings.version,
                backend=backend,
                capacity=self.puller.capacity,
                in_flight=self.puller.in_flight,
                served=runner.served,
                avg_service_ms=runner.avg_service_ms,
                updated_ms=int(time.time() * 1000),
            )
            if isinstance(self.puller, AffinityPuller):
                status.affinity_home = self.puller.taken["home"]
                status.affinity_stolen = self.puller.taken["stolen"]
                now = time.monotonic()
                status.affinity_active = sorted(self.puller.active_buckets(now))
                status.affinity_held = self.puller.held(now)
            try:
                await registry.put(self._registry_key, status.model_dump_json().encode())
            except Exception as exc:  # noqa: BLE001 - the next beat retries; the TTL covers the gap
                log.warning("heartbeat not stored: %s", exc)
            await asyncio.sleep(self.settings.heartbeat_s)

    def _gauges(self, runner: RequestRunner) -> list[Metric]:
        """In-flight requests and backend connection use, read from the runner at scrape time: the
        worker holds at most one backend connection per request in flight, capped at its capacity."""
        labels = [sanitize(self.model.name)]
        in_flight = GaugeMetricFamily(
            "modelbus_worker_in_flight", "Requests a worker is running", labels=["model", "version"]
        )
        in_flight.add_metric([*labels, sanitize(self.settings.version)], float(runner.in_flight))
        connections = GaugeMetricFamily(
            "modelbus_backend_connections", "Worker connections to its backend", labels=["model", "state"]
        )
        connections.add_metric([*labels, "in_use"], float(runner.in_flight))
        connections.add_metric(
            [*labels, "limit"], float(self.puller.capacity if self.puller else self.capacity)
        )
        return [in_flight, connections]

    async def _puller(
        self, nc: NATS, js: JetStreamContext, consumer: str, batch_consumer: str, runner: RequestRunner
    ) -> CapacityPuller:
        """The FIFO puller, or for a model with prefix affinity one that pulls its buckets."""
        settings, model = self.settings, self.model.name
        if self.model.affinity is None:
            return CapacityPuller(
                nc,
                self.subjects.request_stream,
                consumer,
                self.capacity,
                runner.handle,
                batch_consumer=batch_consumer,
                api_prefix=api_prefix(settings),
            )
        # The number of buckets is fixed for the life of the process: a change needs a restart.
        buckets = await ensure_affinity_consumers(
            js, self.subjects, settings, model, settings.version, self.model.affinity.buckets
        )
        return AffinityPuller(
            nc,
            self.subjects.request_stream,
            consumer,
            buckets,
            self.subjects.affinity_bells(model, settings.version),
            self.capacity,
            runner.handle,
            batch_consumer=batch_consumer,
            api_prefix=api_prefix(settings),
            rescan_s=settings.affinity_rescan_s,
            steal_grace_s=settings.affinity_steal_grace_ms / 1000,
            warm_limit_s=settings.affinity_warm_limit_s,
            per_bucket=self.model.affinity.per_bucket,
            guest_slots=self.model.affinity.guest_slots,
            guest_grace_s=settings.affinity_guest_grace_ms / 1000,
            first_slot=self._part(self.slots).start,
        )

    async def _follow_home(self, registry: KeyValue, puller: AffinityPuller) -> None:
        """Recompute the home buckets from the live workers of this model version every heartbeat
        (rendezvous hashing, the buckets that carried work lately spread with a bounded load). A
        worker killed without a goodbye stays in the list until its registry entry expires;
        meanwhile its buckets are stolen."""
        me, version = self.settings.worker_id, self.settings.version
        while True:
            workers = await live_workers(registry)
            mine = [w for w in workers if w.model == self.model.name and w.version == version]
            active = {k for w in mine for k in w.affinity_active or ()}
            held = {w.worker: w.affinity_held or [] for w in mine}
            home = home_buckets(me, [w.worker for w in mine], puller.buckets, active, held)
            puller.set_home(home, frozenset(active))
            await asyncio.sleep(self.settings.heartbeat_s)

    async def _serve(
        self, nc: NATS, config_store: ConfigStore, supervisor: Supervisor, stop: asyncio.Event
    ) -> None:
        settings = self.settings
        backend = build_backend(self.backend_config, self.model.name, self.capacity)
        runner: RequestRunner | None = None
        try:
            js = jetstream(nc, settings)
            await ensure_streams(js, self.subjects, settings, nc.max_payload, supports_msg_ttl(nc))
            consumer = await ensure_consumer(
                js, self.subjects, settings, self.model.name, settings.version, Lane.INTERACTIVE
            )
            batch_consumer = await ensure_consumer(
                js, self.subjects, settings, self.model.name, settings.version, Lane.BATCH
            )
            cancellations = Cancellations(nc, self.subjects)
            await cancellations.start()
            runner = RequestRunner(
                nc,
                settings,
                backend,
                cancellations,
                self.model.coalesce_ms,
                self.model.coalesce_max_inputs,
                QuotaLedger(nc, self.subjects),
                await ResponseStore.open(js, self.subjects, settings, nc.max_payload),
                lambda: self.model.cost,
                lambda: self.labels,
                lambda msg: self.puller.affinity(msg) if isinstance(self.puller, AffinityPuller) else None,
                lambda msg: self.puller.slot(msg) if isinstance(self.puller, AffinityPuller) else None,
            )
            self.puller = await self._puller(nc, js, consumer, batch_consumer, runner)
            log.info(
                "worker %s serving %r with %d slots (%s)",
                settings.worker_id,
                self.model.name,
                self.capacity,
                backend.description,
            )
            retired: list[Backend] = []

            async def on_change(config: ModelbusConfig, revision: int) -> None:
                self.labels = MetricLabels.of(config)
                model = config.model(self.model.name)
                deployment = model.deployment(settings.version) if model is not None else None
                if model is None or deployment is None:
                    log.warning(
                        "config revision %d no longer has %r; serving on until stopped",
                        revision,
                        self.model.name,
                    )
                    return
                assert self.puller is not None
                backend_config, max_concurrency = deployment
                self.puller.capacity = self._share(settings.max_concurrency or max_concurrency)
                if backend_config != self.backend_config:
                    retired.append(
                        runner.swap_backend(build_backend(backend_config, model.name, self.puller.capacity))
                    )
                self.model, self.backend_config = model, backend_config

            registry = await open_registry(js, self.subjects, settings)
            watch_config(config_store, "worker")
            watch(lambda: self._gauges(runner))
            gc.collect()
            gc.freeze()  # start-up objects live on; full collections need not walk them (bench/gc_trace.py)
            pulling = asyncio.create_task(self.puller.run())
            supervisor.supervise("keep-alive", runner.keep_alive)
            supervisor.supervise("config-watch", lambda: config_store.follow(on_change))
            supervisor.supervise("heartbeat", lambda: self._heartbeat(registry, runner, backend.description))
            if isinstance(self.puller, AffinityPuller):
                puller = self.puller
                supervisor.supervise("affinity-home", lambda: self._follow_home(registry, puller))
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
            stopped.cancel()
            await supervisor.aclose()  # no more heartbeats: the registry entry goes for good
            await registry.delete(self._registry_key)  # gone at once, not after the TTL
            for old in retired:
                await old.aclose()  # nothing runs on them any more: the puller has drained
        finally:
            await (runner.backend if runner is not None else backend).aclose()
