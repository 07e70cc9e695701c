"""dispatcher/telemetry/lag.py on a real nats-server: queue depth per lane and live workers' free
slots become gauges, by model and version; a failing round never stops the refresher."""

from __future__ import annotations

import asyncio
import time
import uuid

from dispatcher.bus.topology import ensure_model_consumers
from dispatcher.scheduling.capacity_view import open_registry
from dispatcher.telemetry import metrics
from dispatcher.telemetry.lag import _refresh_once, refresh_lag
from schemas.capacity import WorkerStatus
from schemas.config import ModelbusConfig, ModelConfig
from schemas.envelope import Lane
from tests.unit.conftest import Bus, stop_task


def _gauge(gauge: object, *labels: str) -> float:
    return gauge.labels(*labels)._value.get()  # type: ignore[attr-defined]


async def test_queue_depth_and_free_slots_are_published_per_model_and_lane(bus: Bus) -> None:
    model = "lag" + uuid.uuid4().hex[:6]  # gauges are process-wide: a name of this test's own
    config = ModelbusConfig(models=[ModelConfig(name=model)])
    await ensure_model_consumers(bus.js, bus.subjects, bus.settings, config)
    registry = await open_registry(bus.js, bus.subjects, bus.settings)
    for n, in_flight in enumerate((1, 3)):
        status = WorkerStatus(
            worker=f"w{n}", model=model, version="default", backend="sim", capacity=4,
            in_flight=in_flight, served=0, updated_ms=int(time.time() * 1000),
        )  # fmt: skip
        await registry.put(
            bus.subjects.worker_key(model, "default", f"w{n}"), status.model_dump_json().encode()
        )
    for _ in range(3):
        await bus.js.publish(bus.subjects.request(model, "default", Lane.BATCH), b"x")
    await bus.js.publish(bus.subjects.request(model), b"x")
    await _refresh_once(bus.js, bus.subjects, registry, config)
    assert _gauge(metrics.WORKERS, model, "default") == 2
    assert _gauge(metrics.FREE_SLOTS, model, "default") == 4  # 3 + 1
    assert _gauge(metrics.QUEUE_PENDING, model, "default", "batch") == 3
    assert _gauge(metrics.QUEUE_PENDING, model, "default", "interactive") == 1


async def test_a_failing_round_does_not_stop_the_refresher(bus: Bus) -> None:
    registry = await open_registry(bus.js, bus.subjects, bus.settings)
    rounds = 0

    def config() -> ModelbusConfig:
        nonlocal rounds
        rounds += 1
        if rounds == 1:
            raise RuntimeError("config not loaded yet")
        return ModelbusConfig(models=[])

    refreshing = asyncio.ensure_future(refresh_lag(bus.js, bus.subjects, registry, config, every_s=0.01))
    try:
        async with asyncio.timeout(5):
            while rounds < 3:
                await asyncio.sleep(0.01)
    finally:
        await stop_task(refreshing)
