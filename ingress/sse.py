"""Server-Sent Events for generations that may last minutes.

Unlike a plain streaming response, this one watches for the client going away even while nothing
is being sent (a request waiting in the queue), so upstream work is cancelled at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from schemas.dialects import anthropic_error
from schemas.endpoints import ErrorStyle
from schemas.openai import ErrorResponse

SSE_HEADERS = {
    "Cache-Control": "no-cache",
    "Connection": "keep-alive",
    # nginx and similar proxies buffer responses unless told not to; tokens must not wait.
    "X-Accel-Buffering": "no",
}


def data_event(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


def named_event(payload: bytes) -> bytes:
    """`event: <type>` then the data: how the Responses and Messages APIs frame their events (the
    anthropic SDK dispatches on the event name). The type is the payload's own `type` field."""
    kind = orjson.loads(payload).get("type", "message")
    return b"event: " + str(kind).encode() + b"\n" + data_event(payload)


def comment(text: str) -> bytes:
    return b": " + text.encode() + b"\n\n"


def error_event(
    error: ErrorResponse, status: int, style: ErrorStyle = "openai", named: bool = False
) -> bytes:
    """A failure after the stream began, as each API reports it: an `error` object in a data line
    (chat; the openai SDK raises on it), an `error` event (Responses: its fields, and the `error`
    object too so that the SDK raises rather than end quietly), or Anthropic's `error` event."""
    detail = error.error
    if style == "anthropic":
        return named_event(orjson.dumps(anthropic_error(status, detail.message)))
    if named:
        fields = {"type": "error", "code": detail.code, "message": detail.message, "param": detail.param}
        return named_event(orjson.dumps({**fields, "sequence_number": 0, "error": detail.model_dump()}))
    return data_event(orjson.dumps(error.model_dump()))


DONE = b"data: [DONE]\n\n"


class LastEvents(bytes):
    """The stream's last events: they go out with the end of the body, in one write instead of two."""


class EventStreamResponse(Response):
    def __init__(
        self,
        events: AsyncIterator[bytes],
        headers: Mapping[str, str],
        on_disconnect: Callable[[], Awaitable[None]],
    ) -> None:
        # Like starlette's StreamingResponse: no body attribute, hence no Content-Length header.
        self.status_code = 200
        self.media_type = "text/event-stream"
        self.background = None
        self.init_headers({**SSE_HEADERS, **headers})
        self._events = events
        self._on_disconnect = on_disconnect

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sending = asyncio.create_task(self._send_all(send, self.raw_headers))
        watching = asyncio.create_task(_wait_for_disconnect(receive))
        try:
            done, _ = await asyncio.wait({sending, watching}, return_when=asyncio.FIRST_COMPLETED)
            if sending in done:
                sending.result()
            else:
                sending.cancel()
                await asyncio.gather(sending, return_exceptions=True)
                await self._on_disconnect()
        finally:
            for task in (sending, watching):
                task.cancel()
            await asyncio.gather(sending, watching, return_exceptions=True)
            await _close(self._events)

    async def _send_all(self, send: Send, headers: list[tuple[bytes, bytes]]) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        try:
            async for event in self._events:
                last = isinstance(event, LastEvents)
                await send({"type": "http.response.body", "body": event, "more_body": not last})
                if last:
                    return  # the body is complete; closing the iterator runs its cleanup
        except OSError:
            await self._on_disconnect()  # the client vanished between two events
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _wait_for_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def _close(events: AsyncIterator[bytes]) -> None:
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        await aclose()
