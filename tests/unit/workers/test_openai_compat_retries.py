"""The OpenAI-compatible adapter retries a backend that fails before generating anything."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from modelbus.embedded_nats import free_port
from schemas.config import OpenAIBackend
from schemas.envelope import Endpoint
from tests.support.http_backends import serving
from workers.backends.backend_errors import BackendError
from workers.backends.openai_compat import OpenAICompatBackend

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
ANSWER = {"id": "c", "object": "chat.completion", "choices": [], "model": "m"}


@pytest.fixture
async def flaky() -> AsyncIterator[tuple[str, list[int]]]:
    """A loopback server answering 503 twice, then 200; `calls` counts what it received."""
    calls: list[int] = []

    async def chat(_request: web.Request) -> web.Response:
        calls.append(1)
        if len(calls) <= 2:
            return web.json_response({"error": {"message": "loading model"}}, status=503)
        return web.json_response(ANSWER)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    async with serving(app) as url:
        yield url, calls


async def test_a_restarting_backend_is_retried_up_to_max_retries(flaky: tuple[str, list[int]]) -> None:
    url, calls = flaky
    backend = OpenAICompatBackend(OpenAIBackend(base_url=url, max_retries=2), "m", 2)
    try:
        assert await backend.complete(Endpoint.CHAT, CHAT) == ANSWER
    finally:
        await backend.aclose()
    assert len(calls) == 3


async def test_without_retries_the_first_failure_is_reported_as_retryable(
    flaky: tuple[str, list[int]],
) -> None:
    url, calls = flaky
    backend = OpenAICompatBackend(OpenAIBackend(base_url=url, max_retries=0), "m", 2)
    try:
        with pytest.raises(BackendError) as caught:
            await backend.complete(Endpoint.CHAT, CHAT)
    finally:
        await backend.aclose()
    assert (len(calls), caught.value.retryable) == (1, True)


async def test_a_refused_connection_is_retried_then_reported() -> None:
    backend = OpenAICompatBackend(
        OpenAIBackend(base_url=f"http://127.0.0.1:{free_port()}/v1", max_retries=1), "m", 2
    )
    try:
        with pytest.raises(BackendError) as caught:
            await backend.complete(Endpoint.CHAT, CHAT)
    finally:
        await backend.aclose()
    assert (caught.value.status, caught.value.retryable) == (503, True)
