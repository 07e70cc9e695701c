"""Dead-lettering against a real nats-server: exhausted requests move aside and their client hears."""

from __future__ import annotations

import asyncio
import time
import uuid

import nats
import orjson

from dispatcher.bus.bus_settings import BusSettings
from dispatcher.bus.dead_letters import DeadLetterer
from dispatcher.bus.reply_stream import decode_frame
from dispatcher.bus.subjects import Subjects
from dispatcher.bus.topology import ensure_consumer, ensure_streams
from modelbus.embedded_nats import NatsServer
from schemas.envelope import Endpoint, ErrorCode, ErrorFrame, RequestEnvelope
from tests.support.servers import small_streams


async def test_request_that_exhausts_its_deliveries_is_dead_lettered(nats_server: NatsServer) -> None:
    subjects = Subjects("t" + uuid.uuid4().hex[:10])
    settings = BusSettings(
        nats_url=nats_server.url,
        namespace=subjects.namespace,
        ack_wait_s=0.5,
        max_deliver=2,
        **small_streams(),
    )
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await ensure_streams(js, subjects, settings, nc.max_payload, msg_ttl=True)
    consumer = await ensure_consumer(js, subjects, settings, "poison")
    await DeadLetterer(nc, subjects).start()
    replies: asyncio.Queue[bytes] = asyncio.Queue()
    reply_to = subjects.reply("ingress-x", "req-1")

    async def on_reply(msg: nats.aio.msg.Msg) -> None:
        await replies.put(msg.data)

    await nc.subscribe(reply_to, cb=on_reply)

    now = int(time.time() * 1000)
    envelope = RequestEnvelope(
        id="req-1",
        endpoint=Endpoint.CHAT,
        model="poison",
        target="poison",
        consumer="c",
        created_ms=now,
        deadline_ms=now + 60_000,
        reply_to=reply_to,
        quota=None,
        output_guard=None,
        payload={"model": "poison"},
    )
    await js.publish(subjects.request("poison"), envelope.model_dump_json().encode())

    # A worker that takes the request and dies each time: fetch and never ack.
    sub = await js.pull_subscribe_bind(consumer, subjects.request_stream)
    for _ in range(2):
        await sub.fetch(1, timeout=5)
    # JetStream notices the exhausted message when it next tries to deliver it, i.e. on the next
    # pull, which in production a live worker always has outstanding.
    try:
        await sub.fetch(1, timeout=2)
        raise AssertionError("a message was delivered beyond max_deliver")
    except nats.errors.TimeoutError:
        pass

    frame, _ = decode_frame(await asyncio.wait_for(replies.get(), 10))
    assert isinstance(frame, ErrorFrame)
    assert frame.code is ErrorCode.DEAD_LETTERED
    assert not frame.retryable

    info = await js.stream_info(subjects.request_stream)
    assert info.state.messages == 0  # gone from the work queue
    dead = await js.get_last_msg(subjects.dead_letter_stream, subjects.dead_letter("poison"))
    assert orjson.loads(dead.data)["id"] == "req-1"
    assert dead.headers is not None and dead.headers["Modelbus-Deliveries"] == "2"
    await nc.close()
