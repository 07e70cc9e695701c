"""What every Modelbus process (ingress, worker, dispatcher) starts with and how it stops.

    async with process_runtime(settings, "worker", name) as runtime:
        runtime.supervisor.supervise("config", ...)
        runtime.cleanup.push_async_callback(...)

Start-up: tracing, the `/metrics` port (workers and the dispatcher; the ingress too when
`metrics_port` is set, else it serves `/metrics` itself), the
NATS connection with its gauges, a Supervisor. Shutdown, in this order: supervised tasks (given
`grace_s` to finish their current batch), then what the process registered on `cleanup` (newest
first: publishers flush before the connection they publish on closes), then NATS, then tracing.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from dispatcher.bus.bus_settings import BusSettings
from dispatcher.bus.connection import connect, jetstream
from dispatcher.bus.subjects import Subjects
from dispatcher.process.supervisor import Supervisor
from dispatcher.telemetry.exposition import serve_metrics
from dispatcher.telemetry.metrics import watch_nats
from dispatcher.telemetry.tracing import setup_tracing, shutdown_tracing

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    nc: NATS
    js: JetStreamContext
    subjects: Subjects
    supervisor: Supervisor
    cleanup: AsyncExitStack


@asynccontextmanager
async def process_runtime(
    settings: BusSettings,
    component: str,
    connection_name: str,
    *,
    metrics_port: bool = True,
    grace_s: float = 0.0,
) -> AsyncIterator[Runtime]:
    setup_tracing(f"modelbus-{component}", settings.otlp_endpoint, settings.trace_file)
    stop_metrics = None
    try:
        if metrics_port and settings.metrics_port is not None:
            stop_metrics = serve_metrics(settings.metrics_host, settings.metrics_port, settings.metrics_token)
        nc = await connect(settings, name=connection_name)
        try:
            watch_nats(nc, component)
            runtime = Runtime(
                nc,
                jetstream(nc, settings),
                Subjects(settings.namespace),
                Supervisor(component),
                AsyncExitStack(),
            )
            try:
                yield runtime
            finally:
                await runtime.supervisor.aclose(grace_s)
                await runtime.cleanup.aclose()
        finally:
            await _close(nc)
    finally:
        if stop_metrics is not None:
            stop_metrics()
        shutdown_tracing()


async def _close(nc: NATS) -> None:
    # Everything in flight has been awaited by now, so a flush (acks reach the server) and a close
    # suffice; nats-py's drain would wait on pull subscriptions' leftover status messages.
    try:
        await nc.flush(timeout=5)
    except Exception as exc:  # noqa: BLE001 - shutting down anyway
        log.warning("final flush failed: %s", exc)
    await nc.close()
