"""Today's client libraries through the gateway to a real llama-server, compared with the same call
straight to the server: the Responses API and Anthropic's Messages API (served natively by the
server, plain and streamed), rerank and the tokenizer, and a prompt longer than the model's context.

One llama-server (Gemma 3 270M, greedy decoding so both ways give the same words) and one gateway for
the module.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # litellm must not fetch it: loopback only

import anthropic
import httpx
import litellm
import openai
import pytest

from modelbus.embedded_nats import NatsServer, free_port
from schemas.config import ModelConfig, OpenAIBackend
from schemas.envelope import Endpoint
from tests.support.llama_server import ALIAS, run_llama_server
from tests.support.servers import TEST_KEY, Cluster, with_consumers

pytestmark = pytest.mark.llama
PROMPT = "The capital of France is"
CTX = 2048


@dataclass(frozen=True)
class Pair:
    """The same server, called directly and through the gateway."""

    direct: str  # the server's root URL
    gateway: str  # the gateway's root URL

    def openai(self, via_gateway: bool) -> openai.OpenAI:
        if via_gateway:
            return openai.OpenAI(base_url=self.gateway + "/v1", api_key=TEST_KEY, max_retries=0, timeout=60)
        return openai.OpenAI(base_url=self.direct + "/v1", api_key="none", max_retries=0, timeout=60)

    def anthropic(self, via_gateway: bool) -> anthropic.Anthropic:
        base, key = (self.gateway, TEST_KEY) if via_gateway else (self.direct, "none")
        return anthropic.Anthropic(base_url=base, api_key=key, max_retries=0, timeout=60)

    def model(self, via_gateway: bool) -> str:
        return "gemma" if via_gateway else ALIAS


@pytest.fixture(scope="module")
def pair(nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    tmp = tmp_path_factory.mktemp("llama-compat")
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    backend = OpenAIBackend(base_url=url, served_model=ALIAS, native=["responses", "messages"])
    endpoints = [Endpoint.CHAT, Endpoint.COMPLETIONS, Endpoint.RERANK, Endpoint.TOKENIZE, Endpoint.DETOKENIZE]
    model = ModelConfig(name="gemma", endpoints=endpoints, backend=backend, max_concurrency=2)
    cluster = Cluster(tmp, nats_server.url, "t" + uuid.uuid4().hex[:10])
    config = cluster.write_config(with_consumers([model]))
    try:
        # The gateway starts while the server loads its model; the worker needs the server only later.
        with ThreadPoolExecutor(2) as pool:
            gateway = pool.submit(cluster.ingress, config)
            worker = pool.submit(cluster.worker, "gemma", config, "w-llama")
            with run_llama_server(port, tmp / "llama.log", ctx_size=CTX, reranking=True):
                worker.result()
                yield Pair(url.removesuffix("/v1"), gateway.result().removesuffix("/v1"))
    finally:
        cluster.close()


def test_responses_plain_and_streamed_match_the_server(pair: Pair) -> None:
    ask = {"input": PROMPT, "max_output_tokens": 5, "temperature": 0}
    expected = pair.openai(False).responses.create(model=ALIAS, **ask)
    client = pair.openai(True)
    raw = client.responses.with_raw_response.create(model="gemma", **ask)
    response = raw.parse()
    assert response.output_text == expected.output_text and response.output_text
    assert response.id == f"resp_{raw.headers['x-request-id']}" and response.model == "gemma"
    assert response.usage is not None and expected.usage is not None
    assert response.usage.output_tokens == expected.usage.output_tokens
    events = list(client.responses.create(model="gemma", stream=True, **ask))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == events[-1].response.output_text == expected.output_text
    # The server keeps nothing; the gateway does, for every ingress.
    assert client.responses.retrieve(events[-1].response.id).output_text == expected.output_text


def test_anthropic_messages_plain_and_streamed_match_the_server(pair: Pair) -> None:
    # This SDK no longer takes `temperature`; servers still read it, and greedy decoding is the point.
    ask = {
        "max_tokens": 5,
        "messages": [{"role": "user", "content": PROMPT}],
        "extra_body": {"temperature": 0},
    }
    expected = pair.anthropic(False).messages.create(model=ALIAS, **ask)
    client = pair.anthropic(True)
    got = client.messages.create(model="gemma", **ask)
    assert got.content[0].text == expected.content[0].text
    assert (got.stop_reason, got.usage.output_tokens) == (expected.stop_reason, expected.usage.output_tokens)
    assert got.model == "gemma"
    with client.messages.stream(model="gemma", **ask) as stream:
        assert "".join(stream.text_stream) == expected.content[0].text
        assert stream.get_final_message().stop_reason == expected.stop_reason


def test_rerank_and_tokenizer_return_what_the_server_returns(pair: Pair) -> None:
    documents = ["Paris is the capital of France.", "Bananas are yellow."]
    calls = [
        ("/v1/rerank", {"query": "capital of France", "documents": documents, "top_n": 2}),
        ("/tokenize", {"content": "Hello world", "add_special": False}),
        ("/detokenize", {"tokens": [9259, 1902]}),
    ]
    auth = {"Authorization": f"Bearer {TEST_KEY}"}
    for path, body in calls:
        direct = httpx.post(pair.direct + path, json={**body, "model": ALIAS}, timeout=60).json()
        via = httpx.post(pair.gateway + path, json={**body, "model": "gemma"}, headers=auth, timeout=60)
        assert via.status_code == 200, via.text
        assert {**via.json(), "model": ALIAS} == {"model": ALIAS, **direct}  # only the model name is ours
    assert direct == {"content": "Hello world"}


def test_context_overflow_raises_the_same_in_the_sdk_and_litellm(pair: Pair) -> None:
    prompt = "hello " * 3000
    caught: dict[bool, BaseException] = {}
    for via_gateway in (False, True):
        with pytest.raises(openai.BadRequestError) as error:
            pair.openai(via_gateway).completions.create(
                model=pair.model(via_gateway), prompt=prompt, max_tokens=4
            )
        caught[via_gateway] = error.value
    direct, gateway = caught[False], caught[True]
    assert isinstance(gateway, openai.BadRequestError) and gateway.code == "context_length_exceeded"
    tokens = direct.body["n_prompt_tokens"]  # type: ignore[attr-defined]  # llama.cpp's own fields
    assert f"maximum context length is {CTX} tokens" in gateway.message
    assert f"your request has {tokens} input tokens" in gateway.message
    for via_gateway in (False, True):
        base, key = (pair.gateway, TEST_KEY) if via_gateway else (pair.direct, "none")
        with pytest.raises(litellm.ContextWindowExceededError):
            litellm.completion(
                model=f"openai/{pair.model(via_gateway)}",
                api_base=base + "/v1",
                api_key=key,
                messages=[{"role": "user", "content": prompt}],
                max_tokens=4,
                num_retries=0,
            )
