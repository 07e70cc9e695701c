"""ingress/sse.py: event framing per API, and an event stream that notices the client leaving even
while nothing is being sent (a request still queued), then closes its source; plus ingress/body.py,
the size cap that comes before any parsing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from starlette.requests import Request
from starlette.types import Message

from ingress.body import read_body
from ingress.error_responses import APIError
from ingress.sse import (
    DONE,
    EventStreamResponse,
    LastEvents,
    comment,
    data_event,
    error_event,
    named_event,
)
from schemas.openai import error_body


class Source:
    """An event source that can be held open, and remembers whether it was closed."""

    def __init__(self, events: list[bytes], hold: bool) -> None:
        self.events, self.hold, self.closed = events, hold, False

    async def __call__(self) -> AsyncIterator[bytes]:
        try:
            for event in self.events:
                yield event
            if self.hold:
                await asyncio.Event().wait()  # queued: nothing more for now
        finally:
            self.closed = True


async def _serve(
    source: Source, leave: asyncio.Event | None = None, send_fails: bool = False
) -> tuple[list[Message], int]:
    sent: list[Message] = []
    disconnects = 0

    async def on_disconnect() -> None:
        nonlocal disconnects
        disconnects += 1

    async def receive() -> Message:
        await (leave or asyncio.Event()).wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if send_fails and message.get("body"):
            raise OSError("connection reset")
        sent.append(message)

    response = EventStreamResponse(source(), {"x-request-id": "r1"}, on_disconnect)
    await asyncio.wait_for(response({"type": "http"}, receive, send), 5)
    return sent, disconnects


async def test_all_events_are_sent_then_the_body_ends() -> None:
    source = Source([b"data: 1\n\n", b"data: 2\n\n"], hold=False)
    sent, disconnects = await _serve(source)
    start, *bodies = sent
    headers = dict(start["headers"])
    assert headers[b"content-type"].startswith(b"text/event-stream")
    assert headers[b"x-accel-buffering"] == b"no" and headers[b"x-request-id"] == b"r1"
    assert b"content-length" not in headers
    assert [m["body"] for m in bodies] == [b"data: 1\n\n", b"data: 2\n\n", b""]
    assert bodies[-1]["more_body"] is False
    assert disconnects == 0 and source.closed


async def test_the_last_events_end_the_body_in_the_same_message() -> None:
    source = Source([b"data: 1\n\n", LastEvents(b"data: 2\n\ndata: [DONE]\n\n"), b"never sent"], hold=False)
    sent, disconnects = await _serve(source)
    _start, *bodies = sent
    assert [(m["body"], m["more_body"]) for m in bodies] == [
        (b"data: 1\n\n", True),
        (b"data: 2\n\ndata: [DONE]\n\n", False),
    ]
    assert disconnects == 0 and source.closed


async def test_a_client_leaving_while_nothing_is_sent_is_noticed() -> None:
    source = Source([b": queued\n\n"], hold=True)
    leave = asyncio.Event()
    serving = asyncio.ensure_future(_serve(source, leave))
    await asyncio.sleep(0.05)
    assert not serving.done()
    leave.set()
    sent, disconnects = await serving
    assert disconnects == 1  # upstream work is cancelled at once
    assert source.closed
    assert not any(m.get("more_body") is False for m in sent)  # the stream never claimed to be complete


async def test_a_write_to_a_vanished_client_counts_as_leaving() -> None:
    source = Source([b"data: 1\n\n"], hold=False)
    _, disconnects = await _serve(source, send_fails=True)
    assert disconnects == 1 and source.closed


def test_framing_per_api() -> None:
    assert data_event(b'{"a":1}') == b'data: {"a":1}\n\n'
    assert (
        named_event(b'{"type":"response.created"}')
        == b'event: response.created\ndata: {"type":"response.created"}\n\n'
    )
    assert named_event(b'{"x":1}').startswith(b"event: message\n")
    assert comment("keep-alive") == b": keep-alive\n\n"
    assert DONE == b"data: [DONE]\n\n"


@pytest.mark.parametrize(
    ("style", "named", "check"),
    [
        ("openai", False, lambda e: e["error"]["code"] == "worker_lost"),
        ("openai", True, lambda e: e["type"] == "error" and e["code"] == "worker_lost" and "error" in e),
        (
            "anthropic",
            True,
            lambda e: e == {"type": "error", "error": {"type": "api_error", "message": "lost"}},
        ),
    ],
)
def test_a_failure_mid_stream_is_an_error_event_each_sdk_raises_on(
    style: Any, named: bool, check: Any
) -> None:
    event = error_event(error_body(502, "lost", "worker_lost", None), 502, style, named)
    *head, data = event.strip().split(b"\n")
    if named:
        assert head == [b"event: error"]
    assert check(orjson.loads(data.removeprefix(b"data: ")))


def _request(body: list[bytes], headers: dict[str, str]) -> Request:
    chunks = list(body)

    async def receive() -> Message:
        if chunks:
            return {"type": "http.request", "body": chunks.pop(0), "more_body": bool(chunks)}
        return {"type": "http.disconnect"}

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/",
        "query_string": b"",
        "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
    }
    return Request(scope, receive)


async def test_a_body_within_the_limit_is_read_whole() -> None:
    assert await read_body(_request([b"abc", b"def"], {}), 6) == b"abcdef"


@pytest.mark.parametrize(
    ("chunks", "headers", "status"),
    [
        ([b"x" * 7], {"content-length": "7"}, 413),  # refused on the header, before reading
        ([b"abcd", b"efg"], {}, 413),  # no header (chunked): counted while reading
        ([b"abcd", b"efg"], {"content-length": "3"}, 413),  # a header that lies
        ([b"{}"], {"content-length": "2x"}, 400),
    ],
)
async def test_a_body_over_the_limit_is_refused(
    chunks: list[bytes], headers: dict[str, str], status: int
) -> None:
    with pytest.raises(APIError) as refused:
        await read_body(_request(chunks, headers), 6)
    assert refused.value.status == status
