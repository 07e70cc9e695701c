"""The OpenAI-compatible adapter reads a backend's Server-Sent Events whatever pieces they arrive in."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AsyncExitStack
from typing import Any

import pytest
from aiohttp import web

from schemas.config import OpenAIBackend
from schemas.envelope import Endpoint
from tests.support.http_backends import serving
from workers.backends.backend_errors import BackendError
from workers.backends.openai_compat import OpenAICompatBackend

CHAT = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
Serve = Callable[[list[bytes]], Coroutine[Any, Any, str]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """A loopback backend that writes the given pieces, each flushed on its own, as its stream."""
    async with AsyncExitStack() as servers:

        async def start(pieces: list[bytes]) -> str:
            async def chat(request: web.Request) -> web.StreamResponse:
                response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
                await response.prepare(request)
                for piece in pieces:
                    await response.write(piece)
                    await asyncio.sleep(0.01)  # a read of its own at the worker
                await response.write_eof()
                return response

            app = web.Application()
            app.router.add_post("/v1/chat/completions", chat)
            return await servers.enter_async_context(serving(app))

        yield start


async def _chunks(url: str) -> list[Any]:
    backend = OpenAICompatBackend(OpenAIBackend(base_url=url, max_retries=0), "m", 2)
    try:
        return [chunk async for chunk in backend.stream(Endpoint.CHAT, CHAT)]
    finally:
        await backend.aclose()


async def test_events_split_across_reads_and_several_in_one_read_are_each_one_chunk(serve: Serve) -> None:
    url = await serve(
        [
            b'data: {"n":1}\n\ndata: {"n',
            b'":2}\r\n\r\n: a comment\n\nevent: x\ndata: {"n":3}\n',
            b"\ndata: [DONE]\n\n",
        ]
    )
    assert await _chunks(url) == [{"n": 1}, {"n": 2}, {"n": 3}]


async def test_nothing_after_done_is_read_as_a_chunk(serve: Serve) -> None:
    url = await serve([b'data: {"n":1}\n\ndata: [DONE]\n\ndata: {"n":2}\n\n'])
    assert await _chunks(url) == [{"n": 1}]


async def test_a_last_event_without_its_newline_still_counts(serve: Serve) -> None:
    url = await serve([b'data: {"n":1}\n\ndata: {"n":2}'])
    assert await _chunks(url) == [{"n": 1}, {"n": 2}]


async def test_a_broken_chunk_is_a_backend_error(serve: Serve) -> None:
    with pytest.raises(BackendError, match="invalid stream chunk"):
        await _chunks(await serve([b'data: {"n":\n\n']))


async def test_an_endless_line_is_a_backend_error(serve: Serve) -> None:
    with pytest.raises(BackendError, match="too long"):
        await _chunks(await serve([b"data: " + b"x" * 600_000, b"y" * 600_000]))


async def _batches(url: str) -> list[tuple[list[Any], bool]]:
    backend = OpenAICompatBackend(OpenAIBackend(base_url=url, max_retries=0), "m", 2)
    try:
        return [batch async for batch in backend.stream_batches(Endpoint.CHAT, CHAT)]
    finally:
        await backend.aclose()


@pytest.mark.parametrize(("gap_s", "first"), [(0.0, 3), (0.03, 1)])
async def test_a_quick_burst_is_one_batch_that_ends_the_stream_and_a_slow_stream_is_not_held(
    gap_s: float, first: int
) -> None:
    """Events written one by one in quick succession (a fast backend) come as one batch flagged as
    the last; a model's pace (tens of ms a token) is not held beyond the first token's 1 ms."""
    events = [b'data: {"n":%d}\n\n' % n for n in range(3)] + [b"data: [DONE]\n\n"]

    async def chat(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for event in events:
            await response.write(event)
            await asyncio.sleep(gap_s)  # 0: a loop turn between writes, as a quick server's
        with contextlib.suppress(ConnectionError):  # the reader may be gone after [DONE]
            await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    async with serving(app) as url:
        batches = await _batches(url)
    assert [chunk["n"] for chunks, _ in batches for chunk in chunks] == [0, 1, 2]
    assert len(batches[0][0]) == first
    assert batches[-1][1] is True and all(not last for _, last in batches[:-1])
