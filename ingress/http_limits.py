"""HTTP/1.1 limits uvicorn lacks, enforced where the bytes arrive: uvicorn's httptools protocol,
subclassed.

uvicorn bounds idle keep-alive (`timeout_keep_alive`) and concurrent tasks (`limit_concurrency`),
but with httptools it buffers a header of any size (httptools accumulates a header value until its
end: a 64 MB header cost 238 MB RSS) and waits forever for a header or a body that trickles in (40
slowloris connections were still open after 100 s). An ASGI middleware cannot help: the app is
called only once the headers are complete. So the protocol counts head bytes as they are fed to
the parser and arms one timer per phase:

- head larger than `max_header_bytes` → 431 and close, at the first byte past the limit;
- head not complete `header_timeout_s` after its first byte (or after the connection opened) → 408
  and close;
- body not complete `body_timeout_s` after the head → 408 (if no response has started) and close;
  the app sees a disconnect;
- more than `max_connections` open connections → 503 and close at once.

Each refusal is an OpenAI-shaped JSON error with `Connection: close`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from ingress.head_with_body import one_write
from schemas.openai import error_body


@dataclass(frozen=True)
class HttpLimits:
    max_header_bytes: int
    header_timeout_s: float
    body_timeout_s: float
    max_connections: int


def _refusal(status: int, message: str, code: str) -> bytes:
    body = error_body(status, message, code).model_dump_json().encode()
    head = b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body)
    return STATUS_LINE[status] + head + body


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits above; `limits` is set by `limited_protocol`."""

    limits: HttpLimits

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # A new connection waits for a head (its timer is armed in connection_made); between requests
        # only uvicorn's keep-alive timeout runs, and the next head starts at its first byte.
        self._in_head = True
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self._refuse(
                503, "too many open connections to this ingress; retry later", "too_many_connections"
            )
            return
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)
        # Still in a head after this chunk: httptools holds it (a head that ended in this chunk was
        # measured exactly in on_headers_complete).
        if self._in_head and not self._refused:
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_header_bytes:
                self._refuse_large_head()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._arm_head_timer()

    def on_headers_complete(self) -> None:
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.limits.max_header_bytes:
            self._refuse_large_head()
            return
        self._in_head = False
        self._head_bytes = 0
        self._cancel_timers()
        self._body_timer = self.loop.call_later(self.limits.body_timeout_s, self._body_timed_out)
        super().on_headers_complete()
        one_write(self.cycle)  # a response with a length: head and body in one write

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        if not self._refused:
            super().on_message_complete()

    # ------------------------------------------------------------------------------------------
    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_timed_out)

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._in_head and not self._refused:
            seconds = self.limits.header_timeout_s
            self._refuse(408, f"the request head did not arrive within {seconds:g} s", "request_timeout")

    def _body_timed_out(self) -> None:
        self._body_timer = None
        cycle = self.cycle
        if self._refused or cycle is None or cycle.response_complete:
            return
        seconds = self.limits.body_timeout_s
        if cycle.response_started:
            self._refused = True
            self.transport.close()
        else:
            self._refuse(408, f"the request body did not arrive within {seconds:g} s", "request_timeout")
        # The app reading the body sees the client gone and stops.
        cycle.disconnected = True
        cycle.message_event.set()

    def _refuse_large_head(self) -> None:
        limit = self.limits.max_header_bytes
        self._refuse(431, f"the request head exceeds {limit} bytes", "request_header_fields_too_large")

    def _refuse(self, status: int, message: str, code: str) -> None:
        self._refused = True
        self._cancel_timers()
        if not self.transport.is_closing():
            self.transport.write(_refusal(status, message, code))
            self.transport.close()


def limited_protocol(limits: HttpLimits) -> type[LimitedHttpToolsProtocol]:
    """The protocol class to pass to uvicorn as `http=`, bound to these limits."""
    return type("BoundLimitedHttpToolsProtocol", (LimitedHttpToolsProtocol,), {"limits": limits})
