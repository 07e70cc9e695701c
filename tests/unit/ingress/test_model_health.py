"""ingress/model_health.py on a real nats-server: live workers from the registry watch (stale and
stopped ones drop out), queue depth across lanes, and the trouble a request asks about."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from nats.js.kv import KeyValue

from dispatcher.admission.live_config import LiveConfig
from dispatcher.bus.topology import ensure_model_consumers
from dispatcher.scheduling.capacity_view import open_registry
from ingress.model_health import ModelHealth
from schemas.capacity import WorkerStatus
from schemas.config import ModelbusConfig, ModelConfig
from schemas.envelope import Lane
from tests.unit.conftest import Bus, stop_task

CONFIG = ModelbusConfig(models=[ModelConfig(name="m"), ModelConfig(name="idle")])


async def _heartbeat(bus: Bus, registry: KeyValue, worker: str, age_s: float = 0.0, **fields: object) -> None:
    status = WorkerStatus.model_validate(
        {
            "worker": worker, "model": "m", "version": "default", "backend": "sim", "capacity": 2,
            "in_flight": 0, "served": 0, "updated_ms": int((time.time() - age_s) * 1000), **fields,
        }
    )  # fmt: skip
    await registry.put(bus.subjects.worker_key("m", "default", worker), status.model_dump_json().encode())


@pytest.fixture
async def health(bus: Bus) -> AsyncIterator[tuple[ModelHealth, KeyValue]]:
    registry = await open_registry(bus.js, bus.subjects, bus.settings)
    await ensure_model_consumers(bus.js, bus.subjects, bus.settings, CONFIG)
    model_health = ModelHealth(bus.js, bus.subjects, registry, LiveConfig(CONFIG), stale_after_s=30)
    watching = asyncio.ensure_future(model_health.watch_workers())
    yield model_health, registry
    await stop_task(watching)


async def _until(condition: object) -> None:
    async with asyncio.timeout(5):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.01)


async def test_live_workers_follow_the_registry(bus: Bus, health: tuple[ModelHealth, KeyValue]) -> None:
    model_health, registry = health
    assert model_health.trouble(CONFIG.models[0], None) == "no_live_workers"
    await _heartbeat(bus, registry, "w1")
    await _heartbeat(bus, registry, "w2", age_s=60)  # its last heartbeat is older than stale_after_s
    await _until(lambda: len(model_health._workers) == 2)
    assert [w.worker for w in model_health.live_workers("m")] == ["w1"]
    assert model_health.trouble(CONFIG.models[0], None) is None
    await registry.delete(bus.subjects.worker_key("m", "default", "w1"))  # stopped cleanly
    await _until(lambda: not model_health.live_workers("m"))
    assert model_health.trouble(CONFIG.models[0], None) == "no_live_workers"


async def test_a_queue_longer_than_the_wait_budget_is_trouble(
    bus: Bus, health: tuple[ModelHealth, KeyValue]
) -> None:
    model_health, registry = health
    await _heartbeat(bus, registry, "w1", avg_service_ms=1000.0)  # 2 slots, 1 s a request
    await _until(lambda: model_health.live_workers("m"))
    for lane in (Lane.INTERACTIVE, Lane.BATCH, Lane.BATCH):
        await bus.js.publish(bus.subjects.request("m", "default", lane), b"x")
    refreshing = asyncio.ensure_future(model_health.refresh_queues(every_s=0.05))
    try:
        await _until(lambda: model_health.estimated_wait_s("m") == 1.5)  # 3 queued / 2 slots * 1 s
    finally:
        await stop_task(refreshing)
    assert model_health.trouble(CONFIG.models[0], 1.0) == "wait_over_budget"
    assert model_health.trouble(CONFIG.models[0], 2.0) is None
    assert model_health.trouble(CONFIG.models[0], None) is None  # no budget: it waits
    assert model_health.estimated_wait_s("idle") is None
