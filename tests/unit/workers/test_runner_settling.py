"""workers/runner.py: the settling rules of its docstring, one test each, observed on a real
nats-server (the reply frames the ingress would read and the acks JetStream receives) with the
simulator as the backend."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from nats.aio.msg import Msg

from dispatcher.bus.reply_stream import Frame, decode_frame
from dispatcher.bus.topology import ensure_consumer
from schemas.config import SimulatorBackend
from schemas.envelope import Endpoint, ErrorCode, FinalFrame, RequestEnvelope
from tests.unit.conftest import Bus, stop_task
from workers.backends import build_backend
from workers.cancellations import Cancellations
from workers.runner import RequestRunner
from workers.worker_settings import WorkerSettings


@dataclass
class Harness:
    bus: Bus
    runner: RequestRunner
    consumer: str
    frames: asyncio.Queue[Frame]
    acks: asyncio.Queue[bytes]
    reply_to: str

    async def deliver(self, envelope: RequestEnvelope | bytes) -> Msg:
        """Queue one request as the ingress does and pull it as the pull loop does."""
        data = envelope if isinstance(envelope, bytes) else envelope.model_dump_json().encode()
        await self.bus.js.publish(self.bus.subjects.request("m"), data)
        sub = await self.bus.js.pull_subscribe_bind(self.consumer, self.bus.subjects.request_stream)
        [msg] = await sub.fetch(1, timeout=5)
        return msg

    async def run(self, envelope: RequestEnvelope | bytes) -> None:
        await self.runner.handle(await self.deliver(envelope))

    async def settlement(self) -> bytes:
        """The acknowledgement JetStream got for the message (+ACK, -NAK with its delay, +TERM)."""
        while (ack := await asyncio.wait_for(self.acks.get(), 5)) == b"+WPI":
            pass  # in-progress acks from keep_alive: not a settlement
        return ack or b"+ACK"  # nats-py acks with an empty body, which JetStream reads as +ACK

    def sent(self) -> list[Frame]:
        out = []
        while not self.frames.empty():
            out.append(self.frames.get_nowait())
        return out


def _settings(bus: Bus, **overrides: Any) -> WorkerSettings:
    values: dict[str, Any] = {
        "nats_url": bus.settings.nats_url,
        "namespace": bus.subjects.namespace,
        "worker_id": "w1",
        "local_retries": 0,
        "ack_wait_s": 5,
    }
    values.update(overrides)
    return WorkerSettings(**values)


@pytest.fixture
def harness(bus: Bus) -> Callable[..., Any]:
    async def build(backend: SimulatorBackend | None = None, **settings: Any) -> Harness:
        worker_settings = _settings(bus, **settings)
        consumer = await ensure_consumer(bus.js, bus.subjects, worker_settings, "m")
        frames: asyncio.Queue[Frame] = asyncio.Queue()
        acks: asyncio.Queue[bytes] = asyncio.Queue()
        reply_to = bus.subjects.reply("ing", "x")

        async def on_frame(msg: Msg) -> None:
            frames.put_nowait(decode_frame(msg.data)[0])

        async def on_ack(msg: Msg) -> None:
            acks.put_nowait(msg.data)

        await bus.nc.subscribe(reply_to, cb=on_frame)
        await bus.nc.subscribe(f"$JS.ACK.{bus.subjects.request_stream}.>", cb=on_ack)
        await bus.nc.flush()
        cancellations = Cancellations(bus.nc, bus.subjects)
        await cancellations.start()
        model = build_backend(backend or SimulatorBackend(ttft_ms=1, tokens_per_s=2000), "m", 8)
        runner = RequestRunner(bus.nc, worker_settings, model, cancellations)
        return Harness(bus, runner, consumer, frames, acks, reply_to)

    return build


@pytest.fixture
def request_for(make_envelope: Callable[..., RequestEnvelope]) -> Callable[..., RequestEnvelope]:
    def build(reply_to: str, **fields: Any) -> RequestEnvelope:
        fields.setdefault(
            "payload", {"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
        )
        return make_envelope(reply_to=reply_to, **fields)

    return build


def _streamed(request_for: Any, h: Harness, **fields: Any) -> RequestEnvelope:
    payload = {"model": "m", "max_tokens": 4, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    return request_for(h.reply_to, stream=True, payload=payload, **fields)  # type: ignore[no-any-return]


async def _wait_frames(h: Harness, count: int) -> list[Frame]:
    got: list[Frame] = []
    while len(got) < count:
        got.append(await asyncio.wait_for(h.frames.get(), 5))
    return got


async def test_an_answered_request_is_acked(harness: Any, request_for: Any) -> None:
    h: Harness = await harness()
    await h.run(request_for(h.reply_to))
    assert await h.settlement() == b"+ACK"
    assert [frame.kind for frame in await _wait_frames(h, 1)] == ["final"]  # plain: no start frame
    assert h.runner.served == 1 and h.runner.in_flight == 0


async def test_a_streamed_answer_is_chunks_then_a_final_frame(harness: Any, request_for: Any) -> None:
    h: Harness = await harness()
    payload = {"model": "m", "max_tokens": 6, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    await h.run(request_for(h.reply_to, stream=True, payload=payload))
    assert await h.settlement() == b"+ACK"
    frames = [frame async for frame in _frames_until_final(h)]
    kinds = [frame.kind for frame in frames]
    # A quick first token: the pickup rides on the first chunk frame instead of a start frame.
    assert kinds[-1] == "final" and set(kinds[:-1]) == {"chunk"}
    assert frames[0].pickup is not None  # type: ignore[union-attr]
    assert [frame.seq for frame in frames] == list(range(len(frames)))


class _Burst:
    """A backend whose whole stream is in hand at once, as when a quick backend's chunks arrive in
    one read: the worker's pump drains it before the publisher wakes."""

    native: frozenset[Endpoint] = frozenset()
    description = "burst"

    async def complete(self, endpoint: Endpoint, payload: Any) -> Any:
        raise AssertionError("streams only")

    async def stream(self, endpoint: Endpoint, payload: Any) -> AsyncIterator[Any]:
        for n in range(3):
            yield {"choices": [{"index": 0, "delta": {"content": str(n)}, "finish_reason": None}]}

    async def aclose(self) -> None:
        pass


@pytest.mark.parametrize("chunks_in_final", [True, False])
async def test_chunks_left_when_the_stream_ends_ride_in_the_final_frame_only_if_the_reader_says_so(
    harness: Any, request_for: Any, chunks_in_final: bool
) -> None:
    h: Harness = await harness()
    h.runner.swap_backend(_Burst())
    await h.run(_streamed(request_for, h, chunks_in_final=chunks_in_final))
    assert await h.settlement() == b"+ACK"
    frames = [frame async for frame in _frames_until_final(h)]
    if chunks_in_final:  # one message: the chunks, the pickup and the end
        [final] = frames
        assert isinstance(final, FinalFrame) and final.count == 3 and final.pickup is not None
    else:  # an older ingress reads no chunks from a final frame
        assert [(frame.kind, getattr(frame, "count", None)) for frame in frames] == [
            ("chunk", 3),
            ("final", None),
        ]


async def test_a_request_at_fault_is_answered_with_its_error_and_acked(
    harness: Any, request_for: Any
) -> None:
    h: Harness = await harness(SimulatorBackend(ttft_ms=1, context_length=2))
    await h.run(request_for(h.reply_to))
    assert await h.settlement() == b"+ACK"  # retrying elsewhere would fail the same way
    [error] = await _wait_frames(h, 1)
    assert error.kind == "error" and error.code is ErrorCode.INVALID_REQUEST  # type: ignore[union-attr]
    assert error.status == 400 and not error.retryable  # type: ignore[union-attr]


async def test_backend_unavailable_with_deliveries_left_is_naked_with_a_delay_and_no_error(
    harness: Any, request_for: Any
) -> None:
    h: Harness = await harness(SimulatorBackend(ttft_ms=1, error_rate=1.0), max_deliver=3)
    await h.run(request_for(h.reply_to))
    ack = await h.settlement()
    assert ack.startswith(b"-NAK") and b"delay" in ack
    await h.bus.nc.flush()
    assert h.sent() == []  # nothing: the ingress keeps waiting for the redelivery
    assert h.runner.served == 0


async def test_backend_unavailable_on_the_last_delivery_is_an_error_and_termed(
    harness: Any, request_for: Any
) -> None:
    h: Harness = await harness(SimulatorBackend(ttft_ms=1, error_rate=1.0), max_deliver=1)
    await h.run(request_for(h.reply_to))
    assert await h.settlement() == b"+TERM"
    [error] = await _wait_frames(h, 1)
    assert error.kind == "error" and error.code is ErrorCode.BACKEND_UNAVAILABLE  # type: ignore[union-attr]
    assert error.retryable  # type: ignore[union-attr]


async def test_an_expired_request_is_not_run_and_is_termed(harness: Any, request_for: Any) -> None:
    h: Harness = await harness()
    now = int(time.time() * 1000)
    await h.run(request_for(h.reply_to, created_ms=now - 2000, deadline_ms=now - 1000))
    assert await h.settlement() == b"+TERM"
    [error] = await _wait_frames(h, 1)  # no start frame: it never ran
    assert error.kind == "error" and error.code is ErrorCode.DEADLINE_EXCEEDED  # type: ignore[union-attr]


async def test_a_request_cancelled_before_pick_up_is_not_run(harness: Any, request_for: Any) -> None:
    h: Harness = await harness()
    envelope = request_for(h.reply_to)
    await h.bus.nc.publish(h.bus.subjects.cancel(envelope.id), b"")
    await h.bus.nc.flush()
    while not h.runner._cancellations.is_cancelled(envelope.id):
        await asyncio.sleep(0.01)
    await h.run(envelope)
    assert await h.settlement() == b"+TERM"
    [error] = await _wait_frames(h, 1)
    assert error.kind == "error" and error.code is ErrorCode.CANCELLED  # type: ignore[union-attr]


async def test_an_undecodable_message_is_termed_without_an_answer(harness: Any) -> None:
    h: Harness = await harness()
    await h.run(b'{"not": "an envelope"}')
    assert await h.settlement() == b"+TERM"
    await h.bus.nc.flush()
    assert h.sent() == []


async def test_a_cancel_from_the_ingress_stops_the_run_and_terms_it(harness: Any, request_for: Any) -> None:
    h: Harness = await harness(SimulatorBackend(ttft_ms=10_000))
    envelope = _streamed(request_for, h)  # a stream's start frame says it was picked up
    running = asyncio.ensure_future(h.run(envelope))
    [start] = await _wait_frames(h, 1)
    assert start.kind == "start"
    await h.bus.nc.publish(h.bus.subjects.cancel(envelope.id), b"")
    await asyncio.wait_for(running, 5)  # the handler itself is not cancelled: it settles
    assert await h.settlement() == b"+TERM"
    [error] = await _wait_frames(h, 1)
    assert error.kind == "error" and error.code is ErrorCode.CANCELLED  # type: ignore[union-attr]


async def test_a_stopping_worker_hands_the_request_back_at_once(harness: Any, request_for: Any) -> None:
    h: Harness = await harness(SimulatorBackend(ttft_ms=10_000))
    running = asyncio.ensure_future(h.run(_streamed(request_for, h)))
    await _wait_frames(h, 1)  # its start frame: running
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert await h.settlement() == b"-NAK"  # no delay: another worker should take it now
    assert h.runner.in_flight == 0


async def test_the_deadline_passing_during_the_run_is_an_error_and_termed(
    harness: Any, request_for: Any
) -> None:
    h: Harness = await harness(SimulatorBackend(ttft_ms=10_000))
    now = int(time.time() * 1000)
    # Long enough to be picked up before it (under load too), short enough for a quick test.
    await h.run(_streamed(request_for, h, created_ms=now, deadline_ms=now + 1500))
    assert await h.settlement() == b"+TERM"
    start, error = await _wait_frames(h, 2)
    assert start.kind == "start"  # it ran: this is the deadline during the run, not before pick-up
    assert error.kind == "error" and error.code is ErrorCode.DEADLINE_EXCEEDED  # type: ignore[union-attr]


async def test_keep_alive_heartbeats_and_in_progress_acks_a_silent_backend(
    harness: Any, request_for: Any
) -> None:
    h: Harness = await harness(SimulatorBackend(ttft_ms=10_000), heartbeat_s=0.1, ack_wait_s=0.6)
    keeping = asyncio.ensure_future(h.runner.keep_alive())
    running = asyncio.ensure_future(h.run(request_for(h.reply_to)))
    try:
        kinds = [frame.kind for frame in await _wait_frames(h, 3)]
        assert kinds == ["heartbeat", "heartbeat", "heartbeat"]  # no pulses asked for
        assert await asyncio.wait_for(h.acks.get(), 5) == b"+WPI"
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await stop_task(keeping)


async def _frames_until_final(h: Harness) -> AsyncIterator[Frame]:
    while True:
        frame = await asyncio.wait_for(h.frames.get(), 5)
        yield frame
        if frame.kind in ("final", "error"):
            return
