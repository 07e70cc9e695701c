"""Today's client libraries through the gateway to the simulator: the Responses API (openai SDK, the
Agents SDK's default model, litellm, langchain), Anthropic's Messages API (anthropic SDK), rerank and
the tokenizer compared with the simulator called directly, and what the gateway says when it cannot.

One gateway for the module: two ingress processes (a conversation continues on the other one), a
dispatcher writing the audit trail, one simulated model that scripts a tool call like a real model.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # litellm must not fetch it: loopback only

import anthropic
import httpx
import litellm
import openai
import pytest
from agents import Agent, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled
from langchain_openai import ChatOpenAI

from modelbus.embedded_nats import NatsServer
from schemas.config import ModelConfig, ScriptedReply, ScriptedToolCall, SimulatorBackend
from schemas.envelope import Endpoint
from simulator.retrieval import tokenize
from simulator.server import create_app
from tests.support.servers import OTHER_KEY, TEST_KEY, Cluster, audit_records, wait_until, with_consumers

SIM = SimulatorBackend(
    ttft_ms=2,
    tokens_per_s=5000,
    context_length=4096,
    script=[
        ScriptedReply(
            match="weather", tool_calls=[ScriptedToolCall(name="get_weather", arguments='{"city": "Paris"}')]
        ),
        ScriptedReply(match="^sunny", reply="It is sunny in Paris."),
    ],
)
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
AUTH = {"Authorization": f"Bearer {TEST_KEY}"}


@dataclass(frozen=True)
class Gateway:
    urls: tuple[str, str]  # two ingress processes, each `.../v1`
    database_url: str

    @property
    def root(self) -> str:
        return self.urls[0].removesuffix("/v1")

    def openai(self, which: int = 0, key: str = TEST_KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.urls[which], api_key=key, max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def gateway(
    module_database_url: str, nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    set_tracing_disabled(True)  # the Agents SDK would export traces to OpenAI
    cluster = Cluster(tmp_path_factory.mktemp("compat"), nats_server.url, "t" + uuid.uuid4().hex[:10])
    endpoints = [
        Endpoint.CHAT,
        Endpoint.COMPLETIONS,
        Endpoint.RERANK,
        Endpoint.SCORE,
        Endpoint.TOKENIZE,
        Endpoint.DETOKENIZE,
    ]
    config = cluster.write_config(with_consumers([ModelConfig(name="sim", endpoints=endpoints, backend=SIM)]))
    # Started side by side: each process spends its start-up importing, which overlaps on two cores.
    with ThreadPoolExecutor(4) as pool:
        starting = [
            pool.submit(cluster.dispatcher, config, module_database_url),
            pool.submit(cluster.worker, "sim", config, "w-sim"),
            pool.submit(cluster.ingress, config),
            pool.submit(cluster.ingress, config),
        ]
        urls = (starting[2].result(), starting[3].result())
        for future in starting[:2]:
            future.result()
    yield Gateway(urls, module_database_url)
    cluster.close()


def test_function_tool_conversation_continues_on_another_ingress(gateway: Gateway) -> None:
    first, second = gateway.openai(0), gateway.openai(1)
    asked = first.responses.create(model="sim", input="What is the weather in Paris?", tools=[WEATHER_TOOL])
    (call,) = asked.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris"}
    output = {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"}
    answered = second.responses.create(
        model="sim", previous_response_id=asked.id, input=[output], tools=[WEATHER_TOOL]
    )
    assert answered.output_text == "It is sunny in Paris."
    assert answered.previous_response_id == asked.id and answered.status == "completed"
    assert answered.usage is not None and answered.usage.output_tokens > 0

    # Stored, for its owner only, with the whole conversation the model read.
    assert first.responses.retrieve(answered.id).output_text == "It is sunny in Paris."
    items = [item.type for item in second.responses.input_items.list(answered.id)]
    assert items == ["function_call_output", "function_call", "message"]  # newest first
    with pytest.raises(openai.NotFoundError):
        gateway.openai(0, OTHER_KEY).responses.retrieve(answered.id)
    with pytest.raises(openai.BadRequestError) as foreign:
        gateway.openai(0, OTHER_KEY).responses.create(model="sim", previous_response_id=asked.id, input="hi")
    assert foreign.value.code == "previous_response_not_found"

    # Each stored response holds its whole conversation: deleting the first breaks nothing later.
    assert second.responses.delete(asked.id) is None  # the SDK returns nothing for a delete
    with pytest.raises(openai.NotFoundError):
        first.responses.retrieve(asked.id)
    later = first.responses.create(model="sim", previous_response_id=answered.id, input="Thanks", store=False)
    assert later.store is False
    with pytest.raises(openai.NotFoundError):
        first.responses.retrieve(later.id)

    # Audited like any request, the delete as an action.
    def rows() -> list[dict[str, Any]]:
        return audit_records(gateway.database_url, "record::jsonb->>'endpoint' LIKE 'responses%'")

    wait_until(lambda: len(rows()) >= 5, 20, "no audit rows for the responses")
    served = [r for r in rows() if r["endpoint"] == "responses" and r["status"] == "served"]
    assert {r["output"]["id"] for r in served} >= {asked.id, answered.id, later.id}
    continued = next(r for r in served if r["output"]["id"] == answered.id)
    assert [item.get("type") for item in continued["input"]["input"]] == [
        "message",
        "function_call",
        "function_call_output",
    ]
    (deleted,) = [r for r in rows() if r["endpoint"] == "responses.delete"]
    assert deleted["input"] == {"response_id": asked.id} and deleted["consumer"] == "tester"


def test_streamed_response_has_typed_events_the_sdk_assembles(gateway: Gateway) -> None:
    client = gateway.openai()
    with client.responses.stream(model="sim", input="sunny today?", instructions="Be brief.") as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert final.output_text == "It is sunny in Paris." and final.instructions == "Be brief."
    assert client.responses.retrieve(final.id).output_text == final.output_text  # streams are stored
    # Cut short by max_output_tokens: `response.incomplete`, as OpenAI ends such a stream.
    events = list(client.responses.create(model="sim", input="Count", max_output_tokens=5, stream=True))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    last = events[-1]
    assert (
        last.type == "response.incomplete" and last.response.incomplete_details.reason == "max_output_tokens"
    )
    assert len(last.response.output_text.split()) == 5


def test_agents_sdk_default_model_runs_a_tool(gateway: Gateway) -> None:
    calls: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        calls.append(city)
        return "sunny, 21 C"

    client = openai.AsyncOpenAI(base_url=gateway.urls[1], api_key=TEST_KEY, max_retries=0)
    model = OpenAIResponsesModel(model="sim", openai_client=client)  # the SDK's default kind of model
    agent = Agent(name="forecaster", instructions="Answer briefly.", model=model, tools=[get_weather])
    result = Runner.run_sync(agent, "What is the weather in Paris?")
    assert calls == ["Paris"]
    assert result.final_output == "It is sunny in Paris."


def test_litellm_and_langchain_use_the_responses_api(gateway: Gateway) -> None:
    # litellm raises max_output_tokens to OpenAI's minimum of 16.
    via_litellm = litellm.responses(
        model="openai/sim",
        input="Say hello",
        api_base=gateway.urls[0],
        api_key=TEST_KEY,
        max_output_tokens=16,
    )
    text = via_litellm.output[0].content[0].text
    assert len(text.split()) == 16
    chat = ChatOpenAI(
        model="sim", base_url=gateway.urls[1], api_key=TEST_KEY, use_responses_api=True, max_retries=0
    )
    assert chat.invoke("Say hello", max_output_tokens=16).text == text  # the simulator is deterministic


def test_anthropic_messages_with_tool_use(gateway: Gateway) -> None:
    client = anthropic.Anthropic(base_url=gateway.root, api_key=TEST_KEY, max_retries=0)  # x-api-key
    tool = {"name": "get_weather", "description": "The weather", "input_schema": WEATHER_TOOL["parameters"]}
    question = {"role": "user", "content": "What is the weather in Paris?"}
    asked = client.messages.create(model="sim", max_tokens=64, messages=[question], tools=[tool])
    (use,) = asked.content
    assert (asked.stop_reason, use.type, use.name, use.input) == (
        "tool_use",
        "tool_use",
        "get_weather",
        {"city": "Paris"},
    )
    turns = [
        question,
        {"role": "assistant", "content": [use.model_dump()]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny, 21 C"}],
        },
    ]
    answered = client.messages.create(model="sim", max_tokens=64, messages=turns, tools=[tool])
    assert answered.content[0].text == "It is sunny in Paris." and answered.stop_reason == "end_turn"
    with client.messages.stream(model="sim", max_tokens=64, messages=turns, tools=[tool]) as stream:
        assert "".join(stream.text_stream) == "It is sunny in Paris."
        assert stream.get_final_message().usage.output_tokens == answered.usage.output_tokens
    # Errors in Anthropic's shape, so its SDK raises what it would against Anthropic.
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(model="sim", max_tokens=5000, messages=[question])
    assert caught.value.body["error"]["message"] == "prompt is too long: 5006 tokens > 4096 maximum"
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=gateway.root, api_key="mb-wrong", max_retries=0).messages.create(
            model="sim", max_tokens=8, messages=[question]
        )


async def test_rerank_and_tokenizer_return_what_the_simulator_returns(gateway: Gateway) -> None:
    direct = httpx.AsyncClient(transport=httpx.ASGITransport(create_app(SIM)), base_url="http://simulator")
    calls = [
        ("/v1/rerank", {"query": "capital of France", "documents": ["Bananas", "Paris, capital of France"]}),
        ("/v1/score", {"text_1": "capital of France", "text_2": ["Bananas", "Paris, capital of France"]}),
        ("/v1/score", {"text_1": ["a b", "c d"], "text_2": ["a", "d"]}),
        ("/tokenize", {"content": "Hello wörld"}),
        ("/detokenize", {"tokens": tokenize("Hello wörld")}),
    ]
    async with direct, httpx.AsyncClient(base_url=gateway.root, headers=AUTH) as via:
        for path, body in calls:
            expected = (await direct.post(path, json={**body, "model": "sim"})).json()
            got = await via.post(path, json={**body, "model": "sim"})
            assert got.status_code == 200, got.text
            assert got.json() == expected
        # A pairing the backend could not score is refused before it reaches the bus.
        bad = await via.post(
            "/v1/score", json={"model": "sim", "text_1": ["a", "b"], "text_2": ["a", "b", "c"]}
        )
        assert bad.status_code == 400 and "as many as `text_2`" in bad.json()["error"]["message"]
    assert expected["content"] == "Hello wörld"


def test_unsupported_route_names_what_the_gateway_serves(gateway: Gateway) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        gateway.openai().audio.speech.create(model="sim", voice="alloy", input="hi")
    assert caught.value.code == "unsupported_endpoint"
    assert "POST /v1/audio/speech" in caught.value.message and "POST /v1/responses" in caught.value.message


def test_async_task_is_not_mistaken_for_a_completion(gateway: Gateway) -> None:
    raw = gateway.openai().chat.completions.with_raw_response.create(
        model="sim",
        messages=[{"role": "user", "content": "later"}],
        extra_headers={"Prefer": "respond-async"},
    )
    task = raw.http_response.json()
    assert raw.status_code == 202 and raw.headers["location"] == f"/v1/tasks/{task['id']}"
    assert task["object"] == "task" and "choices" not in task
