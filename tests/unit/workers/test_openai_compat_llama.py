"""The OpenAI-compatible adapter against a real server: llama.cpp's llama-server on this CPU."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from modelbus.embedded_nats import free_port
from schemas.config import ModelConfig, OpenAIBackend
from schemas.envelope import Endpoint
from tests.support.llama_server import run_llama_server
from tests.support.servers import TEST_KEY, Cluster, with_consumers
from workers.backends.openai_compat import OpenAICompatBackend

PROMPT = {"prompt": "The capital of France is", "temperature": 0}


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with run_llama_server(free_port(), tmp_path_factory.mktemp("llama") / "llama.log") as url:
        yield url


def _backend(url: str) -> OpenAICompatBackend:
    return OpenAICompatBackend(OpenAIBackend(base_url=url, served_model="gemma-3-270m"), "gemma", 2)


def _busy_slots(url: str) -> int:
    slots = httpx.get(url.removesuffix("/v1") + "/slots", timeout=5).json()
    return sum(1 for slot in slots if slot.get("is_processing"))


async def test_streamed_completion_yields_text_and_usage(llama: str) -> None:
    backend = _backend(llama)
    chunks = [
        c async for c in backend.stream(Endpoint.COMPLETIONS, {**PROMPT, "model": "gemma", "max_tokens": 8})
    ]
    await backend.aclose()
    text = "".join(choice.get("text", "") for chunk in chunks for choice in chunk.get("choices") or ())
    assert text.strip()
    usage = [chunk["usage"] for chunk in chunks if chunk.get("usage")]
    assert usage and 1 <= usage[-1]["completion_tokens"] <= 8
    assert usage[-1]["prompt_tokens"] >= 5


async def test_plain_completion_returns_openai_body(llama: str) -> None:
    backend = _backend(llama)
    body = await backend.complete(Endpoint.COMPLETIONS, {**PROMPT, "model": "gemma", "max_tokens": 4})
    await backend.aclose()
    assert body["choices"][0]["text"]
    assert body["usage"]["completion_tokens"] <= 4


async def test_closing_the_stream_stops_generation_on_the_server(llama: str) -> None:
    backend = _backend(llama)
    stream = backend.stream(Endpoint.COMPLETIONS, {**PROMPT, "model": "gemma", "max_tokens": 1500})
    for _ in range(3):
        await anext(stream)
    assert _busy_slots(llama) == 1
    await stream.aclose()  # type: ignore[attr-defined]
    closed = time.monotonic()
    while _busy_slots(llama) and time.monotonic() - closed < 5:
        await asyncio.sleep(0.05)
    assert _busy_slots(llama) == 0
    # llama.cpp notices the closed connection at its next token; on a busy 2-core machine a token
    # can take a few hundred ms, hence more room than the gateway's own 1 s check (test_delivery).
    assert time.monotonic() - closed < 2.0
    await backend.aclose()


def test_gateway_serves_a_real_model(llama: str, cluster: Cluster) -> None:
    backend = OpenAIBackend(base_url=llama, served_model="gemma-3-270m")
    model = ModelConfig(name="gemma", endpoints=[Endpoint.COMPLETIONS], backend=backend, max_concurrency=2)
    config = cluster.write_config(with_consumers([model]))
    with cluster.together():
        gateway = cluster.ingress(config)
        cluster.worker("gemma", config, "w-llama")
    client = openai.OpenAI(base_url=gateway, api_key=TEST_KEY, max_retries=0, timeout=60)
    plain = client.completions.create(model="gemma", prompt=PROMPT["prompt"], max_tokens=6, temperature=0)
    assert plain.model == "gemma" and plain.choices[0].text.strip()
    streamed = list(
        client.completions.create(
            model="gemma", prompt=PROMPT["prompt"], max_tokens=6, temperature=0, stream=True
        )
    )
    text = "".join(c.choices[0].text for c in streamed if c.choices)
    assert text == plain.choices[0].text  # greedy decoding: the same text both ways
