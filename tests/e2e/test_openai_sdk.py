"""The unmodified `openai` SDK against a real gateway: ingress and workers over nats-server."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import openai
import pytest

from modelbus.embedded_nats import NatsServer
from schemas.config import ModelConfig, SimulatorBackend
from schemas.envelope import Endpoint
from tests.support.servers import TEST_KEY, Cluster, with_consumers


@pytest.fixture(scope="module")
def base_url(nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    cluster = Cluster(tmp_path_factory.mktemp("sdk"), nats_server.url, "t" + uuid.uuid4().hex[:10])
    config = cluster.write_config(
        with_consumers(
            [
                ModelConfig(name="chat-sim", backend=SimulatorBackend(ttft_ms=5, tokens_per_s=2000)),
                ModelConfig(
                    name="embed-sim",
                    endpoints=[Endpoint.EMBEDDINGS],
                    backend=SimulatorBackend(embedding_dim=16),
                ),
            ]
        )
    )
    with cluster.together():
        url = cluster.ingress(config)
        cluster.worker("chat-sim", config, "w-chat")
        cluster.worker("embed-sim", config, "w-embed")
    yield url
    cluster.close()


@pytest.fixture
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key=TEST_KEY, max_retries=0, timeout=30)


def test_chat_completion(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="chat-sim", messages=[{"role": "user", "content": "Say hello"}], max_tokens=5
    )
    completion = raw.parse()
    assert completion.model == "chat-sim"
    assert completion.choices[0].message.role == "assistant"
    assert len(completion.choices[0].message.content.split()) == 5
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 5
    assert completion.id == f"chatcmpl-{raw.headers['x-request-id']}"
    assert raw.headers["x-modelbus-worker"] == "w-chat"
    assert raw.headers["x-modelbus-model"] == "chat-sim"
    assert int(raw.headers["x-modelbus-queue-ms"]) >= 0


def test_chat_completion_stream(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="chat-sim",
        messages=[{"role": "user", "content": "Count"}],
        max_tokens=7,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 7
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 7
    assert all(c.model == "chat-sim" for c in chunks)


def test_stream_without_usage_request_has_no_usage_chunk(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="chat-sim", messages=[{"role": "user", "content": "x"}], max_tokens=3, stream=True
        )
    )
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)


def test_completions(client: openai.OpenAI) -> None:
    completion = client.completions.create(model="chat-sim", prompt="Once upon a time", max_tokens=4)
    assert completion.object == "text_completion"
    assert len(completion.choices[0].text.split()) == 4
    assert completion.usage.completion_tokens == 4


def test_completions_stream(client: openai.OpenAI) -> None:
    chunks = list(client.completions.create(model="chat-sim", prompt="Once", max_tokens=4, stream=True))
    assert len("".join(c.choices[0].text for c in chunks if c.choices).split()) == 4


def test_embeddings_single_and_batch(client: openai.OpenAI) -> None:
    single = client.embeddings.create(model="embed-sim", input="hello world")
    assert len(single.data) == 1 and len(single.data[0].embedding) == 16
    batch = client.embeddings.create(model="embed-sim", input=["a", "b", "hello world"])
    assert [d.index for d in batch.data] == [0, 1, 2]
    assert batch.data[2].embedding == single.data[0].embedding  # same text, same vector


def test_models_list(client: openai.OpenAI) -> None:
    assert sorted(m.id for m in client.models.list()) == ["chat-sim", "embed-sim"]
    assert client.models.retrieve("embed-sim").id == "embed-sim"


def test_wrong_key_is_authentication_error(base_url: str) -> None:
    bad = openai.OpenAI(base_url=base_url, api_key="mb-not-a-real-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        bad.chat.completions.create(model="chat-sim", messages=[{"role": "user", "content": "x"}])
    assert "mb-not-a-real-key" not in str(caught.value)


def test_unknown_model_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert caught.value.code == "model_not_found"


def test_model_on_wrong_endpoint_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="chat-sim", input="x")


def test_tools_fields_pass_through(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="chat-sim",
        messages=[{"role": "user", "content": "weather?"}],
        tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
        tool_choice="auto",
        max_tokens=2,
    )
    assert completion.choices[0].message.content
