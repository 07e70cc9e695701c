"""Fixtures shared by the unit tests: a JetStream namespace of their own on the session's nats-server."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from dispatcher.bus.bus_settings import BusSettings
from dispatcher.bus.subjects import Subjects
from dispatcher.bus.topology import ensure_streams
from modelbus.embedded_nats import NatsServer
from schemas.envelope import Endpoint, RequestEnvelope
from tests.support.servers import small_streams


@dataclass
class Bus:
    nc: NATS
    js: JetStreamContext
    subjects: Subjects
    settings: BusSettings


@pytest.fixture
async def bus(nats_server: NatsServer) -> AsyncIterator[Bus]:
    """A connection and the request streams of a fresh namespace (a real nats-server)."""
    nc = await nats.connect(nats_server.url)
    subjects = Subjects("u" + uuid.uuid4().hex[:10])
    settings = BusSettings(
        nats_url=nats_server.url, namespace=subjects.namespace, ack_wait_s=5, **small_streams()
    )
    js = nc.jetstream()
    await ensure_streams(js, subjects, settings, nc.max_payload, msg_ttl=True)
    yield Bus(nc, js, subjects, settings)
    await nc.close()


@pytest.fixture
def make_envelope() -> Callable[..., RequestEnvelope]:
    """Builds a chat request envelope; keyword arguments override its fields."""

    def build(**fields: Any) -> RequestEnvelope:
        now = int(time.time() * 1000)
        values: dict[str, Any] = {
            "id": "r-" + uuid.uuid4().hex,
            "endpoint": Endpoint.CHAT,
            "model": "m",
            "target": "m",
            "consumer": "c",
            "created_ms": now,
            "deadline_ms": now + 30_000,
            "reply_to": "unused",
            "quota": None,
            "output_guard": None,
            "payload": {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        }
        values.update(fields)
        return RequestEnvelope(**values)

    return build


async def stop_task(task: asyncio.Future[Any]) -> None:
    """Cancel a background loop and wait for it to end.

    Cancels again until it ends: on Python 3.11 `asyncio.wait_for` (inside nats-py's requests) loses a
    cancellation that arrives as its inner call completes, and a loop like `refresh_queues` then runs
    on (seen once in about ten runs of tests/unit/ingress/test_model_health.py at load average 12).
    """
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=0.5)
    if not task.cancelled() and task.exception() is not None:
        raise task.exception()  # type: ignore[misc]


async def cancelled_requests(bus: Bus) -> asyncio.Queue[str]:
    """Ids of the requests whose cancellation is published from now on, as workers receive them."""
    seen: asyncio.Queue[str] = asyncio.Queue()

    async def on_cancel(msg: Msg) -> None:
        seen.put_nowait(msg.subject.rsplit(".", 1)[-1])

    await bus.nc.subscribe(bus.subjects.all_cancels, cb=on_cancel)
    await bus.nc.flush()
    return seen
