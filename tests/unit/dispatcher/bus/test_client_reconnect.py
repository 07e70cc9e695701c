"""dispatcher/bus/client.py across a reconnect of the ingress to NATS (a real nats-server killed -9
and restarted on its port): a plain request answered while the ingress was away — its only frame
published to nobody — is called lost at once instead of waiting for its deadline, and a request still
queued is not."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS

from dispatcher.bus.bus_settings import BusSettings
from dispatcher.bus.client import BusClient, ReplyStream
from dispatcher.bus.reply_stream import ReplyWriter
from dispatcher.bus.subjects import Subjects
from dispatcher.bus.topology import ensure_streams
from dispatcher.errors import WorkerLost
from modelbus.embedded_nats import NatsServer, single_server
from schemas.envelope import Pickup, RequestEnvelope, Timings
from tests.support.servers import small_streams

MakeEnvelope = Callable[..., RequestEnvelope]
IDLE_S = 0.3


@dataclass
class Restartable:
    server: NatsServer
    nc: NATS
    client: BusClient
    subjects: Subjects

    async def bounce(self) -> None:
        """Kill -9 the server, start it again on its port, and wait for the client's reconnect."""
        before = self.client.reconnects
        self.server.kill()
        self.server.start()
        deadline = time.monotonic() + 20
        while self.client.reconnects == before:
            assert time.monotonic() < deadline, "the client did not reconnect"
            await asyncio.sleep(0.05)


@pytest.fixture
async def restartable(tmp_path: Path) -> AsyncIterator[Restartable]:
    server = single_server(tmp_path / "nats")
    server.start()
    nc = await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
    subjects = Subjects("r" + uuid.uuid4().hex[:10])
    settings = BusSettings(nats_url=server.url, namespace=subjects.namespace, **small_streams())
    await ensure_streams(nc.jetstream(), subjects, settings, nc.max_payload, msg_ttl=True)
    client = BusClient(nc, subjects, settings, "ing1", msg_ttl=True)
    client.idle_timeout_s = IDLE_S
    await client.start()
    try:
        yield Restartable(server, nc, client, subjects)
    finally:
        await nc.close()
        server.stop()


async def _submit(client: BusClient, make_envelope: MakeEnvelope) -> ReplyStream:
    envelope = make_envelope()
    return await client.submit(envelope.model_copy(update={"reply_to": client.reply_subject(envelope.id)}))


async def test_a_request_answered_while_the_ingress_reconnected_is_lost_at_once(
    restartable: Restartable, make_envelope: MakeEnvelope
) -> None:
    reply = await _submit(restartable.client, make_envelope)
    await restartable.bounce()
    # A worker answered meanwhile: its final frame went to nobody, then it acked (work queue: gone).
    js = restartable.nc.jetstream()
    info = await js.stream_info(restartable.subjects.request_stream)
    await js.delete_msg(restartable.subjects.request_stream, info.state.last_seq)
    started = time.monotonic()
    with pytest.raises(WorkerLost):
        await reply.frames(10)
    assert time.monotonic() - started < 4 * IDLE_S  # not the request's 30 s deadline


async def test_a_request_still_queued_across_a_reconnect_keeps_waiting_for_its_answer(
    restartable: Restartable, make_envelope: MakeEnvelope
) -> None:
    reply = await _submit(restartable.client, make_envelope)
    await restartable.bounce()
    # Several looks in JetStream find it stored: no answer yet, and no error either.
    assert await reply.frames(5 * IDLE_S) == []
    writer = ReplyWriter(restartable.nc, reply.envelope.reply_to, attempt=1)
    await writer.start(Pickup(worker="w1", backend="sim", version="default", queue_ms=0), announce=False)
    await writer.final(Timings(received_ms=1, picked_up_ms=2, finished_ms=3), None, "stop", b"{}")
    frames = await reply.frames(5)
    assert [frame.kind for frame, _ in frames] == ["final"]


async def test_without_a_reconnect_a_silent_plain_request_waits_for_its_worker(
    restartable: Restartable, make_envelope: MakeEnvelope
) -> None:
    # The lookup is only for a reconnect: otherwise nothing published could have gone to nobody.
    reply = await _submit(restartable.client, make_envelope)
    js = restartable.nc.jetstream()
    info = await js.stream_info(restartable.subjects.request_stream)
    await js.delete_msg(restartable.subjects.request_stream, info.state.last_seq)
    assert await reply.frames(4 * IDLE_S) == []
