"""dispatcher/bus/internal_calls.py on a real nats-server: the gateway's own requests (classifier,
semantic cache) get the final body, or None — never an exception — when the model fails, is absent
or too slow."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from dispatcher.admission.admitted import SYSTEM_CONSUMER
from dispatcher.bus.client import BusClient
from dispatcher.bus.internal_calls import ask
from dispatcher.bus.reply_stream import ReplyWriter
from schemas.config import ModelConfig
from schemas.envelope import Endpoint, ErrorCode, Pickup, RequestEnvelope, Timings
from tests.unit.conftest import Bus

MODEL = ModelConfig(name="m", endpoints=[Endpoint.CHAT, Endpoint.EMBEDDINGS])
TIMINGS = Timings(received_ms=1, picked_up_ms=2, finished_ms=3)


@pytest.fixture
async def client(bus: Bus) -> AsyncIterator[BusClient]:
    bus_client = BusClient(bus.nc, bus.subjects, bus.settings, "disp", msg_ttl=True)
    await bus_client.start()
    yield bus_client


async def _worker(bus: Bus, answer: str) -> RequestEnvelope:
    """Take the one queued request, as a worker would, and answer it (`final` or `error`)."""
    while True:
        try:
            msg = await bus.js.get_last_msg(bus.subjects.request_stream, bus.subjects.request("m"))
            break
        except Exception:  # noqa: BLE001 - not queued yet
            await asyncio.sleep(0.01)
    envelope = RequestEnvelope.model_validate_json(msg.data)
    writer = ReplyWriter(bus.nc, envelope.reply_to, attempt=1)
    await writer.start(Pickup(worker="w1", backend="sim", version="default", queue_ms=0), announce=True)
    if answer == "final":
        await writer.final(TIMINGS, None, "stop", b'{"data":[]}')
    else:
        await writer.error(ErrorCode.BACKEND_ERROR, "no", 502, False)
    return envelope


async def test_the_answer_is_the_final_body(bus: Bus, client: BusClient) -> None:
    answer, envelope = await asyncio.gather(
        ask(client, MODEL, Endpoint.EMBEDDINGS, {"model": "m", "input": "x"}, 5), _worker(bus, "final")
    )
    assert answer == b'{"data":[]}'
    assert envelope.consumer == SYSTEM_CONSUMER and envelope.quota is None


async def test_a_failing_model_gives_none(bus: Bus, client: BusClient) -> None:
    answer, _ = await asyncio.gather(
        ask(client, MODEL, Endpoint.EMBEDDINGS, {"model": "m", "input": "x"}, 5), _worker(bus, "error")
    )
    assert answer is None


async def test_no_answer_in_time_gives_none(client: BusClient) -> None:
    # Nobody serves "m" here. The request's own deadline is the timeout, so workers would drop it too.
    ask_once = ask(client, MODEL, Endpoint.EMBEDDINGS, {"model": "m", "input": "x"}, 0.3)
    assert await asyncio.wait_for(ask_once, 5) is None


async def test_a_request_the_bus_refuses_gives_none(client: BusClient) -> None:
    huge = {"model": "m", "input": "x" * client.max_payload}
    assert await ask(client, MODEL, Endpoint.EMBEDDINGS, huge, 5) is None
