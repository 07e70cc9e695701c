"""A response with a Content-Length reaches the socket in one write; any other is written as before."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from ingress.head_with_body import one_write


class _Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


def _cycle(method: str = "POST", keep_alive: bool = True) -> tuple[RequestResponseCycle, _Transport]:
    transport = _Transport()
    cycle = RequestResponseCycle(
        scope={"type": "http", "method": method, "path": "/", "http_version": "1.1"},  # type: ignore[typeddict-item]
        transport=transport,  # type: ignore[arg-type]
        flow=FlowControl(transport),  # type: ignore[arg-type]
        logger=logging.getLogger("test"),
        access_logger=logging.getLogger("test.access"),
        access_log=False,
        default_headers=[],
        message_event=asyncio.Event(),
        expect_100_continue=False,
        keep_alive=keep_alive,
        on_response=lambda: None,
    )
    one_write(cycle)
    return cycle, transport


def _start(*headers: tuple[bytes, bytes]) -> Any:
    return {"type": "http.response.start", "status": 200, "headers": list(headers)}


@pytest.mark.parametrize("keep_alive", [True, False])
async def test_head_and_body_of_a_response_with_a_length_are_one_write(keep_alive: bool) -> None:
    cycle, transport = _cycle(keep_alive=keep_alive)
    await cycle.send(_start((b"content-length", b"5"), (b"content-type", b"text/plain")))
    assert transport.writes == []  # held for the body
    await cycle.send({"type": "http.response.body", "body": b"hello", "more_body": False})
    [written] = transport.writes
    assert written.startswith(b"HTTP/1.1 200 OK\r\n") and written.endswith(b"\r\n\r\nhello")
    assert b"content-length: 5\r\n" in written
    assert cycle.response_complete and transport.closed is not keep_alive


async def test_a_response_without_a_length_writes_its_head_at_once() -> None:
    cycle, transport = _cycle()
    await cycle.send(_start((b"content-type", b"text/event-stream")))
    assert len(transport.writes) == 1 and b"transfer-encoding: chunked" in transport.writes[0]
    await cycle.send({"type": "http.response.body", "body": b"data: x\n\n", "more_body": True})
    await cycle.send({"type": "http.response.body", "body": b"", "more_body": False})
    assert len(transport.writes) == 3


async def test_a_head_request_writes_its_head_alone() -> None:
    cycle, transport = _cycle(method="HEAD")
    await cycle.send(_start((b"content-length", b"5")))
    await cycle.send({"type": "http.response.body", "body": b"", "more_body": False})
    assert len(transport.writes) == 1 and transport.writes[0].endswith(b"\r\n\r\n")
