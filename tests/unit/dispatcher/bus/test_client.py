"""dispatcher/bus/client.py against a real nats-server: the durable publish, and a reply stream's order,
errors, deadline, worker liveness, interruption and stray replies."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import orjson
import pytest

from dispatcher.bus.client import BusClient, ReplyStream
from dispatcher.bus.reply_stream import ReplyWriter, encode_frame
from dispatcher.errors import DeadlineExceeded, Interrupted, RemoteError, RequestTooLarge, WorkerLost
from schemas.envelope import ChunkFrame, ErrorCode, FinalFrame, Pickup, RequestEnvelope, StartFrame, Timings
from tests.unit.conftest import Bus, cancelled_requests

TIMINGS = Timings(received_ms=1, picked_up_ms=2, finished_ms=3)
MakeEnvelope = Callable[..., RequestEnvelope]


@pytest.fixture
async def client(bus: Bus) -> AsyncIterator[BusClient]:
    bus_client = BusClient(bus.nc, bus.subjects, bus.settings, "ing1", msg_ttl=True)
    await bus_client.start()
    yield bus_client


async def _submit(client: BusClient, make_envelope: MakeEnvelope, **fields: object) -> ReplyStream:
    envelope = make_envelope(**fields)
    return await client.submit(envelope.model_copy(update={"reply_to": client.reply_subject(envelope.id)}))


async def test_submit_stores_the_request_once_under_its_id(
    bus: Bus, client: BusClient, make_envelope: MakeEnvelope
) -> None:
    envelope = make_envelope()
    await client.submit(envelope)
    # A retry of the same publish (its PubAck lost) is deduplicated by the stream, not queued twice.
    assert await client.enqueue(envelope) is True
    info = await bus.js.stream_info(bus.subjects.request_stream)
    assert info.state.messages == 1
    stored = await bus.js.get_last_msg(bus.subjects.request_stream, bus.subjects.request("m"))
    assert stored.headers is not None and stored.headers["Nats-Msg-Id"] == envelope.id
    assert stored.headers["Nats-TTL"] == "30s"  # the request dies with its deadline
    assert RequestEnvelope.model_validate_json(stored.data) == envelope


async def test_raw_payload_is_spliced_in_as_the_client_sent_it(
    bus: Bus, client: BusClient, make_envelope: MakeEnvelope
) -> None:
    raw = b'{"model":"m","messages":[{"role":"user","content":"h\\u00e9"}],"n":1}'
    envelope = make_envelope(payload=orjson.loads(raw))
    await client.enqueue(envelope, raw)
    stored = await bus.js.get_last_msg(bus.subjects.request_stream, bus.subjects.request("m"))
    assert raw in stored.data
    assert RequestEnvelope.model_validate_json(stored.data) == envelope


async def test_request_larger_than_a_nats_message_is_refused_and_leaves_no_route(
    bus: Bus, client: BusClient, make_envelope: MakeEnvelope
) -> None:
    envelope = make_envelope(payload={"prompt": "x" * client.max_payload})
    with pytest.raises(RequestTooLarge):
        await client.submit(envelope)
    info = await bus.js.stream_info(bus.subjects.request_stream)
    assert info.state.messages == 0
    # No waiting route: a frame for it is a stray, which is cancelled.
    cancels = await cancelled_requests(bus)
    await bus.nc.publish(client.reply_subject(envelope.id), b"junk")
    assert await asyncio.wait_for(cancels.get(), 5) == envelope.id


async def test_frames_come_back_in_order_whatever_order_they_arrive_in(
    bus: Bus, client: BusClient, make_envelope: MakeEnvelope
) -> None:
    reply = await _submit(client, make_envelope)
    subject = reply.envelope.reply_to
    for frame in (
        ChunkFrame(seq=2, count=1),
        StartFrame(seq=0, worker="w1", backend="sim", queue_ms=7),
        ChunkFrame(seq=1, count=1),
        FinalFrame(seq=3, timings=TIMINGS),
    ):
        await bus.nc.publish(subject, encode_frame(frame, f"p{frame.seq}".encode()))
    got: list[tuple[int, bytes]] = []
    while not got or got[-1][0] != 3:
        got += [(frame.seq, payload) for frame, payload in await reply.frames(5)]
    assert got == [(0, b"p0"), (1, b"p1"), (2, b"p2"), (3, b"p3")]
    assert reply.start is not None and reply.start.worker == "w1"


async def test_a_quick_streams_pickup_comes_with_its_first_chunk(
    bus: Bus, client: BusClient, make_envelope: MakeEnvelope
) -> None:
    reply = await _submit(client, make_envelope, stream=True)
    writer = ReplyWriter(bus.nc, reply.envelope.reply_to, attempt=1)
    await writer.start(Pickup(worker="w1", backend="sim", version="default", queue_ms=4), announce=False)
    await writer.chunks([b"{}"])
    await writer.announce()  # the start frame's timer firing late: the pickup went out already
    await writer.final(TIMINGS, None, "stop")
    got: list[tuple[str, int]] = []
    while not got or got[-1][0] != "final":
        got += [(frame.kind, frame.seq) for frame, _ in await reply.frames(5)]
    assert got == [("chunk", 0), ("final", 1)]
    assert reply.start is not None and (reply.start.worker, reply.start.queue_ms) == ("w1", 4)


async def test_frames_before_an_error_are_delivered_then_the_error_raised(
    bus: Bus, client: BusClient, make_envelope: MakeEnvelope
) -> None:
    reply = await _submit(client, make_envelope)
    writer = ReplyWriter(bus.nc, reply.envelope.reply_to, attempt=1)
    await writer.start(Pickup(worker="w1", backend="sim", version="default", queue_ms=0), announce=True)
    await writer.chunks([b"{}"])
    await writer.error(ErrorCode.BACKEND_ERROR, "it broke", 502, retryable=True, api_code="server_error")
    await bus.nc.flush()
    await asyncio.sleep(0)  # let the three frames reach the inbox, so they arrive as one burst
    kinds: list[str] = []
    with pytest.raises(RemoteError) as raised:
        while True:
            kinds += [frame.kind for frame, _ in await reply.frames(5)]
    assert kinds == ["start", "chunk"]
    assert (raised.value.status, raised.value.api_code, raised.value.retryable) == (502, "server_error", True)


async def test_no_answer_before_the_deadline_raises_deadline_exceeded(
    client: BusClient, make_envelope: MakeEnvelope
) -> None:
    now = int(time.time() * 1000)
    reply = await _submit(client, make_envelope, created_ms=now, deadline_ms=now + 300)
    with pytest.raises(DeadlineExceeded):
        while True:
            await reply.frames(5)


async def test_silent_worker_after_relaying_is_lost(
    bus: Bus, client: BusClient, make_envelope: MakeEnvelope
) -> None:
    client.idle_timeout_s = 0.3
    reply = await _submit(client, make_envelope)
    writer = ReplyWriter(bus.nc, reply.envelope.reply_to, attempt=1)
    await writer.start(Pickup(worker="w1", backend="sim", version="default", queue_ms=0), announce=True)
    await writer.chunks([b"{}"])
    while not any(frame.kind == "chunk" for frame, _ in await reply.frames(5)):
        pass
    reply.mark_relayed()
    with pytest.raises(WorkerLost):
        await reply.frames(5)


async def test_silent_worker_before_relaying_waits_for_a_redelivery(
    bus: Bus, client: BusClient, make_envelope: MakeEnvelope
) -> None:
    client.idle_timeout_s = 0.2
    reply = await _submit(client, make_envelope)
    first = ReplyWriter(bus.nc, reply.envelope.reply_to, attempt=1)
    await first.start(Pickup(worker="w1", backend="sim", version="default", queue_ms=0), announce=True)
    assert [frame.kind for frame, _ in await reply.frames(5)] == ["start"]
    # Silent past the idle timeout, nothing relayed: not an error, JetStream will redeliver.
    assert await reply.frames(0.6) == []
    second = ReplyWriter(bus.nc, reply.envelope.reply_to, attempt=2)
    await second.start(Pickup(worker="w2", backend="sim", version="default", queue_ms=0), announce=True)
    await second.final(TIMINGS, None, "stop", b"{}")
    frames: list[tuple[str, int]] = []
    while not frames or frames[-1][0] != "final":
        frames += [(frame.kind, frame.attempt) for frame, _ in await reply.frames(5)]
    assert frames == [("start", 2), ("final", 2)]
    assert reply.start is not None and reply.start.worker == "w2"


async def test_redelivery_after_part_of_the_answer_was_relayed_is_an_error(
    bus: Bus, client: BusClient, make_envelope: MakeEnvelope
) -> None:
    reply = await _submit(client, make_envelope)
    first = ReplyWriter(bus.nc, reply.envelope.reply_to, attempt=1)
    await first.start(Pickup(worker="w1", backend="sim", version="default", queue_ms=0), announce=True)
    await first.chunks([b"{}"])
    while not any(frame.kind == "chunk" for frame, _ in await reply.frames(5)):
        pass
    reply.mark_relayed()
    second = ReplyWriter(bus.nc, reply.envelope.reply_to, attempt=2)
    await second.start(Pickup(worker="w2", backend="sim", version="default", queue_ms=0), announce=True)
    with pytest.raises(WorkerLost):
        await reply.frames(5)


async def test_interrupt_wakes_a_waiting_reader(client: BusClient, make_envelope: MakeEnvelope) -> None:
    reply = await _submit(client, make_envelope)
    waiting = asyncio.ensure_future(reply.frames())
    await asyncio.sleep(0)
    reply.interrupt()
    with pytest.raises(Interrupted):
        await asyncio.wait_for(waiting, 5)


async def test_undecodable_frames_are_dropped(
    bus: Bus, client: BusClient, make_envelope: MakeEnvelope
) -> None:
    reply = await _submit(client, make_envelope)
    await bus.nc.publish(reply.envelope.reply_to, b"not json\n")
    await bus.nc.publish(
        reply.envelope.reply_to, encode_frame(StartFrame(worker="w", backend="b", queue_ms=0))
    )
    assert [frame.kind for frame, _ in await reply.frames(5)] == ["start"]


async def test_cancel_is_sent_once_and_not_after_the_answer(
    bus: Bus, client: BusClient, make_envelope: MakeEnvelope
) -> None:
    cancels = await cancelled_requests(bus)
    reply = await _submit(client, make_envelope)
    await reply.cancel()
    await reply.cancel()
    assert await asyncio.wait_for(cancels.get(), 5) == reply.request_id
    finished = await _submit(client, make_envelope)
    await ReplyWriter(bus.nc, finished.envelope.reply_to, attempt=1).final(TIMINGS, None, "stop")
    assert [frame.kind for frame, _ in await finished.frames(5)] == ["final"]
    await finished.cancel()  # the worker is done: nothing to stop
    await bus.nc.flush()
    assert cancels.empty()


async def test_a_stray_reply_cancels_its_worker_once(
    bus: Bus, client: BusClient, make_envelope: MakeEnvelope
) -> None:
    cancels = await cancelled_requests(bus)
    reply = await _submit(client, make_envelope)
    await reply.close()  # the client left: nobody reads this request's frames any more
    writer = ReplyWriter(bus.nc, reply.envelope.reply_to, attempt=1)
    await writer.start(Pickup(worker="w1", backend="sim", version="default", queue_ms=0), announce=True)
    await writer.heartbeat()
    assert await asyncio.wait_for(cancels.get(), 5) == reply.request_id
    await bus.nc.flush()
    await asyncio.sleep(0.1)  # the second frame has been routed by now (same connection, in order)
    assert cancels.empty()


async def test_a_shared_inbox_does_not_cancel_other_readers_requests(
    bus: Bus, make_envelope: MakeEnvelope
) -> None:
    shared = BusClient(bus.nc, bus.subjects, bus.settings, "disp", msg_ttl=True, shared_inbox=True)
    await shared.start()
    cancels = await cancelled_requests(bus)
    await bus.nc.publish(shared.reply_subject("someone-elses"), b"x")
    await bus.nc.flush()
    await asyncio.sleep(0.1)
    assert cancels.empty()


async def test_fair_share_publishes_to_the_consumers_bucket_and_rings_the_bell(
    bus: Bus, make_envelope: MakeEnvelope
) -> None:
    settings = bus.settings.model_copy(update={"fair_share": True})
    client = BusClient(bus.nc, bus.subjects, settings, "ing1", msg_ttl=True, share_bucket=lambda c: "b-" + c)
    bells = await bus.nc.subscribe(bus.subjects.share_bell)
    envelope = make_envelope(consumer="alice")
    await client.enqueue(envelope)
    stored = await bus.js.get_last_msg(
        bus.subjects.share_stream, bus.subjects.share("m", "default", envelope.lane, "b-alice")
    )
    assert RequestEnvelope.model_validate_json(stored.data).id == envelope.id
    await bells.next_msg(timeout=5)
    request_stream = await bus.js.stream_info(bus.subjects.request_stream)
    assert request_stream.state.messages == 0
