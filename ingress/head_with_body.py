"""One write for a response whose length is known: its head goes out with its body.

uvicorn's httptools protocol writes a response's status line and headers as soon as the app sends
`http.response.start`, and its body at `http.response.body`: two writes, two syscalls and two
wake-ups of the client for every plain response (a chat answer, a quick stream answered whole).
When the head says `content-length`, the body follows at once (starlette's `Response` sends both
back to back), so this cycle holds the head and hands it to the transport with the body. A response
without a length (a stream sent as it comes) is written as before: its head must not wait.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn._types import ASGISendEvent
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle


class _Held:
    """Stands in for the transport while uvicorn writes a head: keeps the bytes."""

    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data


class _Prefixed:
    """Stands in for the transport while uvicorn writes a body: the held head goes first, in the
    same write; everything else is the transport's."""

    def __init__(self, transport: asyncio.Transport, head: bytes) -> None:
        self._transport = transport
        self._head = head

    def write(self, data: bytes) -> None:
        head, self._head = self._head, b""
        self._transport.write(head + data if head else data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class HeadWithBodyCycle(RequestResponseCycle):
    """uvicorn's request-response cycle, writing a response with a length in one write."""

    _head: bytes | None = None

    async def send(self, message: ASGISendEvent) -> None:
        if message["type"] == "http.response.start":
            if self.scope["method"] != "HEAD" and not self.response_started and _has_length(message):
                transport, held = self.transport, _Held()
                self.transport = held  # type: ignore[assignment]
                try:
                    await super().send(message)
                finally:
                    self.transport = transport
                self._head = held.data
                return
        elif self._head is not None and message["type"] == "http.response.body":
            transport, head = self.transport, self._head
            self._head = None
            self.transport = _Prefixed(transport, head)  # type: ignore[assignment]
            try:
                await super().send(message)
            finally:
                self.transport = transport
            return
        await super().send(message)


def _has_length(message: Any) -> bool:
    return any(name.lower() == b"content-length" for name, _ in message.get("headers", ()))


def one_write(cycle: RequestResponseCycle | None) -> None:
    """Make `cycle` (just created by the protocol, not yet run) write heads with their bodies."""
    if cycle is not None and type(cycle) is RequestResponseCycle:
        cycle.__class__ = HeadWithBodyCycle
