"""Which reply frames a worker sends: a start frame only where someone can use it before the answer
(a stream, a task); a plain request's pickup rides on its final frame, one message fewer."""

from __future__ import annotations

import asyncio
import time
import uuid

import nats
from nats.aio.client import Client as NATS

from dispatcher.bus.reply_stream import Frame, decode_frame
from dispatcher.bus.subjects import Subjects
from dispatcher.bus.topology import ensure_consumer, ensure_streams
from modelbus.embedded_nats import NatsServer
from schemas.config import SimulatorBackend
from schemas.envelope import ChunkFrame, Endpoint, FinalFrame, RequestEnvelope, StartFrame
from tests.support.servers import small_streams
from workers.backends import build_backend
from workers.cancellations import Cancellations
from workers.runner import RequestRunner
from workers.worker_settings import WorkerSettings


async def _frames_of(nats_server: NatsServer, stream: bool) -> list[Frame]:
    """Run one request through a real runner and return the frames its reply subject received."""
    nc: NATS = await nats.connect(nats_server.url)
    subjects = Subjects("s" + uuid.uuid4().hex[:8])
    settings = WorkerSettings(
        nats_url=nats_server.url, namespace=subjects.namespace, worker_id="w-start", **small_streams()
    )
    js = nc.jetstream()
    await ensure_streams(js, subjects, settings, nc.max_payload, msg_ttl=True)
    consumer = await ensure_consumer(js, subjects, settings, "m")
    reply_to = subjects.reply("ingress-1", "r1")
    received: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_frame(msg: nats.aio.msg.Msg) -> None:
        received.put_nowait(msg.data)

    await nc.subscribe(reply_to, cb=on_frame)
    now = int(time.time() * 1000)
    envelope = RequestEnvelope(
        id="r-" + uuid.uuid4().hex,
        endpoint=Endpoint.CHAT,
        model="m",
        target="m",
        consumer="c",
        stream=stream,
        created_ms=now,
        deadline_ms=now + 60_000,
        reply_to=reply_to,
        quota=None,
        output_guard=None,
        payload={"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]},
    )
    await js.publish(subjects.request("m"), envelope.model_dump_json().encode())
    sub = await js.pull_subscribe_bind(consumer, subjects.request_stream)
    [msg] = await sub.fetch(1, timeout=5)
    backend = build_backend(SimulatorBackend(ttft_ms=0, tokens_per_s=10_000), "m", 8)
    runner = RequestRunner(nc, settings, backend, Cancellations(nc, subjects))
    await runner.handle(msg)
    # Every frame up to the final one, in order (one subscription). Not "whatever arrived by a
    # flush": nats-py runs subscription callbacks on a task of their own, which may not have run
    # when flush() returns (seen at load average 20: no frame at all, or the final one missing).
    frames: list[Frame] = []
    while not frames or frames[-1].kind != "final":
        frames.append(decode_frame(await asyncio.wait_for(received.get(), 10))[0])
    await backend.aclose()
    await nc.close()
    return frames


async def test_plain_request_sends_no_start_frame(nats_server: NatsServer) -> None:
    frames = await _frames_of(nats_server, stream=False)
    assert [frame.kind for frame in frames] == ["final"]
    [final] = frames
    assert isinstance(final, FinalFrame) and final.seq == 0  # the sequence starts at the final frame
    assert final.pickup is not None and final.pickup.worker == "w-start" and final.pickup.queue_ms >= 0


async def test_stream_still_starts_with_a_start_frame(nats_server: NatsServer) -> None:
    frames = await _frames_of(nats_server, stream=True)
    assert isinstance(frames[0], StartFrame) and frames[0].worker == "w-start"
    assert any(isinstance(frame, ChunkFrame) for frame in frames)
    final = frames[-1]
    assert isinstance(final, FinalFrame) and final.pickup is None  # announced already
    assert [frame.seq for frame in frames] == list(range(len(frames)))
