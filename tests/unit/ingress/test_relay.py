"""ingress/relay.py: how a reply read from a real nats-server becomes an HTTP answer (JSON or SSE),
what a client disconnect or a worker error does, and how request headers bound the deadline."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message

from dispatcher.bus.client import BusClient, ReplyStream
from dispatcher.bus.reply_stream import ReplyWriter
from dispatcher.errors import RemoteError
from ingress.audit_events import AuditDraft
from ingress.error_responses import APIError
from ingress.ingress_settings import IngressSettings
from ingress.relay import Relay, _route_needs
from schemas.endpoints import ENDPOINTS
from schemas.envelope import Endpoint, ErrorCode, Pickup, RequestEnvelope, Timings
from schemas.traffic import RouteNeeds
from tests.unit.conftest import Bus, cancelled_requests

TIMINGS = Timings(received_ms=1, picked_up_ms=2, finished_ms=3)
CHAT = ENDPOINTS[Endpoint.CHAT]


class Client:
    """The HTTP side of one request: its headers, and a disconnect the test can trigger."""

    def __init__(self, headers: dict[str, str] | None = None) -> None:
        self.gone = asyncio.Event()
        scope: dict[str, Any] = {
            "type": "http",
            "method": "POST",
            "path": "/v1/chat/completions",
            "query_string": b"",
            "headers": [(k.encode(), v.encode()) for k, v in (headers or {}).items()],
        }
        self.request = Request(scope, self._receive)

    async def _receive(self) -> Message:
        await self.gone.wait()
        return {"type": "http.disconnect"}


@pytest.fixture
async def relay(bus: Bus) -> AsyncIterator[tuple[Relay, BusClient]]:
    client = BusClient(bus.nc, bus.subjects, bus.settings, "ing1", msg_ttl=True)
    await client.start()
    settings = IngressSettings(
        nats_url=bus.settings.nats_url, sse_keepalive_s=0.3, default_timeout_s=30, max_timeout_s=60
    )
    # Only the reply path is under test: admission, tasks and degradation are not reached.
    yield Relay(client, settings, None, None, None), client  # type: ignore[arg-type]


async def _submit(client: BusClient, make_envelope: Callable[..., RequestEnvelope]) -> ReplyStream:
    envelope = make_envelope()
    return await client.submit(envelope.model_copy(update={"reply_to": client.reply_subject(envelope.id)}))


@pytest.fixture
async def submitted(
    relay: tuple[Relay, BusClient], make_envelope: Callable[..., RequestEnvelope]
) -> tuple[Relay, ReplyStream]:
    """The relay and one request it has submitted, its reply not yet started."""
    relay_, client = relay
    return relay_, await _submit(client, make_envelope)


async def _worker(bus: Bus, reply: ReplyStream, announce: bool, queue_ms: int = 0) -> ReplyWriter:
    """The worker side of `reply`, its pickup sent now (`announce`) or with its first frame."""
    writer = ReplyWriter(bus.nc, reply.envelope.reply_to, attempt=1)
    await writer.start(Pickup(worker="w1", backend="sim", version="default", queue_ms=queue_ms), announce)
    return writer


def _data_events(body: bytes) -> list[bytes]:
    return [event for event in body.split(b"\n\n") if event.startswith(b"data:")]


def _draft() -> AuditDraft:
    return AuditDraft("rid", "chat", 0)


async def _body(response: Any) -> bytes:
    """Everything the response writes to a client that stays: its body parts, joined."""
    parts: list[bytes] = []

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body":
            parts.append(message.get("body", b""))

    async def receive() -> Message:
        await asyncio.Event().wait()  # the client never leaves
        raise AssertionError("unreachable")

    await response({"type": "http"}, receive, send)
    return b"".join(parts)


async def test_plain_call_answers_the_final_body_with_the_worker_named(
    bus: Bus, submitted: tuple[Relay, ReplyStream]
) -> None:
    relay_, reply = submitted
    writer = ReplyWriter(bus.nc, reply.envelope.reply_to, attempt=1)
    await writer.start(Pickup(worker="w1", backend="sim", version="v2", queue_ms=12), announce=True)
    await writer.final(TIMINGS, None, "stop", b'{"id":"x"}', guard_events=["pii:mask"])
    draft = _draft()
    response = await relay_._complete(Client().request, reply, draft)
    assert response.status_code == 200
    assert response.body == b'{"id":"x"}'
    headers = response.headers
    assert (headers["x-modelbus-worker"], headers["x-modelbus-version"], headers["x-modelbus-queue-ms"]) == (
        "w1",
        "v2",
        "12",
    )
    assert headers["x-request-id"] == reply.request_id
    assert draft.body == b'{"id":"x"}' and draft.policy_actions == ["pii:mask"]


async def test_worker_error_is_raised_and_the_worker_told_to_stop(
    bus: Bus, submitted: tuple[Relay, ReplyStream]
) -> None:
    relay_, reply = submitted
    cancels = await cancelled_requests(bus)
    await ReplyWriter(bus.nc, reply.envelope.reply_to, attempt=1).error(
        ErrorCode.BACKEND_ERROR, "boom", 502, retryable=False
    )
    with pytest.raises(RemoteError):
        await relay_._complete(Client().request, reply, _draft())
    # An error frame ends the reply: nothing left to cancel.
    await bus.nc.flush()
    assert cancels.empty()


async def test_client_that_leaves_gets_499_and_its_worker_is_cancelled(
    bus: Bus, submitted: tuple[Relay, ReplyStream]
) -> None:
    relay_, reply = submitted
    cancels = await cancelled_requests(bus)
    caller = Client()
    draft = _draft()
    answering = asyncio.ensure_future(relay_._complete(caller.request, reply, draft))
    await ReplyWriter(bus.nc, reply.envelope.reply_to, attempt=1).start(
        Pickup(worker="w1", backend="sim", version="default", queue_ms=0), announce=True
    )
    caller.gone.set()
    response = await asyncio.wait_for(answering, 5)
    assert response.status_code == 499
    assert draft.cancelled
    assert await asyncio.wait_for(cancels.get(), 5) == reply.request_id


async def test_stream_sends_each_chunk_line_as_one_event_then_done(
    bus: Bus, submitted: tuple[Relay, ReplyStream]
) -> None:
    relay_, reply = submitted
    writer = await _worker(bus, reply, announce=True, queue_ms=3)
    await writer.chunks([b'{"n":1}', b'{"n":2}'])
    await writer.chunks([b'{"n":3}'])
    await writer.final(TIMINGS, None, "stop")
    draft = _draft()
    response = await relay_._stream(Client().request, reply, draft, CHAT)
    assert response.headers["x-modelbus-worker"] == "w1"
    body = await _body(response)
    events = _data_events(body)
    assert events == [b'data: {"n":1}', b'data: {"n":2}', b'data: {"n":3}', b"data: [DONE]"]
    assert draft.chunks == [b'{"n":1}', b'{"n":2}', b'{"n":3}'] and draft.final is not None


async def test_a_stream_whose_final_frame_carries_its_chunks_is_one_plain_sse_body(
    bus: Bus, submitted: tuple[Relay, ReplyStream]
) -> None:
    relay_, reply = submitted
    writer = await _worker(bus, reply, announce=False, queue_ms=3)
    await writer.final(TIMINGS, None, "stop", chunks=[b'{"n":1}', b'{"n":2}'])
    draft = _draft()
    response = await relay_._stream(Client().request, reply, draft, CHAT)
    # The whole answer was in hand: no streaming response, the same events.
    assert type(response) is Response and response.media_type == "text/event-stream"
    assert response.headers["x-modelbus-worker"] == "w1" and response.headers["cache-control"] == "no-cache"
    assert await _body(response) == (
        b': worker=w1 queue_ms=3\n\ndata: {"n":1}\n\ndata: {"n":2}\n\ndata: [DONE]\n\n'
    )
    assert draft.chunks == [b'{"n":1}', b'{"n":2}'] and draft.final is not None
    assert draft.start is not None and draft.start.worker == "w1"


async def test_chunks_in_the_final_frame_follow_the_chunks_streamed_before_it(
    bus: Bus, submitted: tuple[Relay, ReplyStream]
) -> None:
    relay_, reply = submitted
    writer = await _worker(bus, reply, announce=False)
    await writer.chunks([b'{"n":1}'])
    draft = _draft()
    response = await relay_._stream(Client().request, reply, draft, CHAT)
    await writer.final(TIMINGS, None, "stop", chunks=[b'{"n":2}', b'{"n":3}'])
    body = await _body(response)
    events = _data_events(body)
    assert events == [b'data: {"n":1}', b'data: {"n":2}', b'data: {"n":3}', b"data: [DONE]"]
    assert body.count(b": worker=w1") == 1
    assert draft.chunks == [b'{"n":1}', b'{"n":2}', b'{"n":3}'] and draft.final is not None


async def test_stream_error_after_the_first_token_is_an_error_event(
    bus: Bus, submitted: tuple[Relay, ReplyStream]
) -> None:
    relay_, reply = submitted
    writer = await _worker(bus, reply, announce=True)
    await writer.chunks([b'{"n":1}'])
    response = await relay_._stream(Client().request, reply, _draft(), CHAT)
    await writer.error(ErrorCode.BACKEND_ERROR, "backend fell over", 502, retryable=True)
    body = await _body(response)
    *_, last = [event for event in body.split(b"\n\n") if event]
    error = orjson.loads(last.removeprefix(b"data: "))["error"]
    assert error["message"] == "backend fell over" and error["code"] == "backend_error"
    assert b"[DONE]" not in body


async def test_stream_error_before_the_first_token_is_an_http_error(
    bus: Bus, submitted: tuple[Relay, ReplyStream]
) -> None:
    relay_, reply = submitted
    await ReplyWriter(bus.nc, reply.envelope.reply_to, attempt=1).error(
        ErrorCode.INVALID_REQUEST, "bad", 400, retryable=False
    )
    with pytest.raises(RemoteError) as raised:
        await relay_._stream(Client().request, reply, _draft(), CHAT)
    assert raised.value.status == 400


async def test_stream_still_queued_says_so_then_keeps_alive(
    bus: Bus, submitted: tuple[Relay, ReplyStream]
) -> None:
    relay_, reply = submitted
    response = await relay_._stream(Client().request, reply, _draft(), CHAT)  # nothing within 0.3 s
    events = response._events  # type: ignore[attr-defined]
    assert await anext(events) == b": queued\n\n"
    assert await anext(events) == b": keep-alive\n\n"
    await ReplyWriter(bus.nc, reply.envelope.reply_to, attempt=1).final(TIMINGS, None, "stop")
    rest = b"".join([part async for part in events])
    assert rest.endswith(b"data: [DONE]\n\n")


async def test_responses_streams_use_named_events_and_no_done(
    bus: Bus, submitted: tuple[Relay, ReplyStream]
) -> None:
    relay_, reply = submitted
    writer = ReplyWriter(bus.nc, reply.envelope.reply_to, attempt=1)
    await writer.chunks([b'{"type":"response.output_text.delta","delta":"hi"}'])
    await writer.final(TIMINGS, None, "stop")
    response = await relay_._stream(Client().request, reply, _draft(), ENDPOINTS[Endpoint.RESPONSES])
    body = await _body(response)
    assert b'event: response.output_text.delta\ndata: {"type"' in body
    assert b"[DONE]" not in body


@pytest.mark.parametrize(
    ("headers", "stream", "expected"),
    [
        ({}, False, 30.0),
        ({"x-modelbus-timeout": "5"}, False, 5.0),
        ({"x-modelbus-timeout": "5000"}, False, 60.0),  # capped at max_timeout_s
        ({"x-stainless-read-timeout": "7"}, False, 7.0),  # the SDK gives up then: so do we
        ({"x-stainless-read-timeout": "7"}, True, 30.0),  # keep-alives satisfy it on a stream
        ({"x-modelbus-timeout": "3", "x-stainless-read-timeout": "7"}, False, 3.0),
    ],
)
def test_request_deadline_follows_the_callers_timeout(
    relay: tuple[Relay, BusClient], headers: dict[str, str], stream: bool, expected: float
) -> None:
    assert relay[0]._timeout_s(Client(headers).request, stream) == expected


@pytest.mark.parametrize("value", ["soon", "0", "-1", "nan"])
def test_bad_timeout_header_is_a_400(relay: tuple[Relay, BusClient], value: str) -> None:
    with pytest.raises(APIError) as raised:
        relay[0]._timeout_s(Client({"x-modelbus-timeout": value}).request, False)
    assert (raised.value.status, raised.value.code) == (400, "invalid_header")


def test_route_needs_come_from_headers() -> None:
    assert _route_needs(Client().request) is None
    needs = _route_needs(Client({"x-modelbus-max-wait-ms": "250", "x-modelbus-max-cost": "0"}).request)
    assert needs == RouteNeeds(max_wait_ms=250, max_cost=0)


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("x-modelbus-max-wait-ms", "0"),  # no route can promise no wait at all
        ("x-modelbus-max-wait-ms", "-5"),
        ("x-modelbus-max-cost", "inf"),
        ("x-modelbus-max-cost", "nan"),
        ("x-modelbus-max-cost", "cheap"),
    ],
)
def test_bad_route_need_header_is_a_400(header: str, value: str) -> None:
    with pytest.raises(APIError) as raised:
        _route_needs(Client({header: value}).request)
    assert raised.value.status == 400
