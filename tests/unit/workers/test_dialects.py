"""Responses and Messages requests translated to chat completions, and chat answers and streams
translated back (workers/dialects)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from schemas.envelope import Endpoint, OutputGuardrails, RequestEnvelope
from schemas.openai import Usage
from workers import dialects
from workers.dialects import messages, responses
from workers.dialects.responses_stream import NativeResponses, ResponsesFromChat

Json = dict[str, Any]
USAGE = Usage(prompt_tokens=7, completion_tokens=3, total_tokens=10)


def _chunks(*deltas: Json, finish: str = "stop") -> list[Json]:
    out = [{"choices": [{"index": 0, "delta": delta, "finish_reason": None}]} for delta in deltas]
    return [*out, {"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}]


def test_responses_request_becomes_the_same_chat_request() -> None:
    payload = {
        "model": "m",
        "instructions": "Be brief.",
        "input": [
            {"role": "developer", "content": "Use metric units."},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
            {"type": "function_call", "call_id": "c1", "name": "w", "arguments": '{"city":"Oslo"}'},
            {"type": "function_call", "call_id": "c2", "name": "w", "arguments": '{"city":"Rome"}'},
            {"type": "function_call_output", "call_id": "c1", "output": "cold"},
            {"type": "reasoning", "summary": []},
        ],
        "tools": [{"type": "function", "name": "w", "parameters": {"type": "object"}, "strict": True}],
        "tool_choice": {"type": "function", "name": "w"},
        "text": {"format": {"type": "json_schema", "name": "out", "schema": {"type": "object"}}},
        "max_output_tokens": 9,
        "temperature": 0.5,
        "store": True,
    }
    chat = responses.to_chat(payload)
    assert [m["role"] for m in chat["messages"]] == ["system", "system", "user", "assistant", "tool"]
    assert chat["messages"][2]["content"] == "Weather?"
    assert [c["id"] for c in chat["messages"][3]["tool_calls"]] == ["c1", "c2"]  # one turn, two calls
    assert chat["messages"][4] == {"role": "tool", "tool_call_id": "c1", "content": "cold"}
    assert chat["tools"] == [
        {"type": "function", "function": {"name": "w", "parameters": {"type": "object"}, "strict": True}}
    ]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "w"}}
    assert chat["response_format"]["json_schema"]["name"] == "out"
    assert (chat["max_tokens"], chat["temperature"], chat["stream"]) == (9, 0.5, False)
    assert "store" not in chat and "input" not in chat


def test_chat_answer_becomes_a_response_with_text_and_calls() -> None:
    chat = {
        "created": 5,
        "choices": [
            {
                "finish_reason": "tool_calls",
                "message": {
                    "content": "Checking.",
                    "tool_calls": [{"id": "call_1", "function": {"name": "w", "arguments": "{}"}}],
                },
            }
        ],
    }
    body = responses.from_chat(chat, {"input": "x", "instructions": "Be brief."}, "resp_r1", "m", True, USAGE)
    assert [item["type"] for item in body["output"]] == ["message", "function_call"]
    assert body["output"][0]["content"][0]["text"] == "Checking."
    assert body["output"][1]["call_id"] == "call_1"
    assert (body["id"], body["status"], body["instructions"], body["store"]) == (
        "resp_r1",
        "completed",
        "Be brief.",
        True,
    )
    assert body["usage"]["input_tokens"] == 7 and body["usage"]["total_tokens"] == 10
    cut = responses.from_chat(
        {"choices": [{"finish_reason": "length", "message": {"content": "a"}}]},
        {},
        "resp_x",
        "m",
        False,
        None,
    )
    assert cut["status"] == "incomplete" and cut["incomplete_details"] == {"reason": "max_output_tokens"}


def test_chat_stream_becomes_response_events_in_order() -> None:
    events = ResponsesFromChat({"input": "x"}, "resp_r1", "m", True)
    out: list[Json] = []
    call = {"index": 0, "id": "call_1", "function": {"name": "w", "arguments": ""}}
    for chunk in _chunks(
        {"role": "assistant", "content": "Hi"},
        {"content": " there"},
        {"tool_calls": [call]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]},
        finish="tool_calls",
    ):
        out += events.chunk(chunk)
    out += events.finish(USAGE, "tool_calls")
    kinds = [e["type"] for e in out]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for e in out] == list(range(len(out)))
    assert out[0]["response"]["output"] == []  # a snapshot from before any output
    final = out[-1]["response"]
    assert final["output"][0]["content"][0]["text"] == "Hi there"
    assert json.loads(final["output"][1]["arguments"]) == {"a": 1}
    assert events.response is final and final["usage"]["output_tokens"] == 3


def test_native_response_events_get_our_ids_indexes_and_the_terminal_event_last() -> None:
    events = NativeResponses({"input": "x"}, "resp_r1", "m", True)
    raw = [
        {"type": "response.created", "response": {"id": "resp_theirs", "status": "in_progress"}},
        {"type": "response.output_item.added", "item": {"id": "msg_1", "type": "message", "content": []}},
        {"type": "response.output_text.delta", "item_id": "msg_1", "delta": "Hi"},
        {
            "type": "response.completed",
            "response": {
                "id": "resp_theirs",
                "model": "gemma",
                "output": [],
                "usage": {"input_tokens": 2, "output_tokens": 1, "total_tokens": 3},
            },
            "timings": {},
        },
    ]
    out = [event for item in raw for event in events.chunk(item)]
    assert [e["type"] for e in out] == [
        "response.created",
        "response.output_item.added",
        "response.output_text.delta",
    ]
    assert (
        out[0]["response"]["id"] == "resp_r1" and out[2]["output_index"] == 0 and out[2]["content_index"] == 0
    )
    (done,) = events.finish(None, None)
    assert done["sequence_number"] == 3 and done["response"]["model"] == "m" and "timings" not in done
    assert events.usage == Usage(prompt_tokens=2, completion_tokens=1, total_tokens=3)


def test_messages_request_with_tool_use_and_result_becomes_chat() -> None:
    payload = {
        "model": "m",
        "max_tokens": 5,
        "system": [{"type": "text", "text": "Be brief."}],
        "stop_sequences": ["END"],
        "messages": [
            {"role": "user", "content": "Weather?"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t1", "name": "w", "input": {"city": "Oslo"}}],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": "cold"},
                    {"type": "text", "text": "And?"},
                ],
            },
        ],
        "tools": [{"name": "w", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "any"},
    }
    chat = messages.to_chat(payload)
    roles = [m["role"] for m in chat["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "user"]
    assert json.loads(chat["messages"][2]["tool_calls"][0]["function"]["arguments"]) == {"city": "Oslo"}
    assert chat["messages"][3] == {"role": "tool", "tool_call_id": "t1", "content": "cold"}
    assert (chat["stop"], chat["tool_choice"], chat["max_tokens"]) == (["END"], "required", 5)
    assert chat["tools"][0]["function"]["parameters"] == {"type": "object"}


def test_chat_stream_becomes_anthropic_events() -> None:
    events = messages.MessagesFromChat("msg_r1", "m")
    out: list[Json] = []
    for chunk in _chunks(
        {"content": "Hi"},
        {"tool_calls": [{"index": 0, "id": "t1", "function": {"name": "w", "arguments": "{}"}}]},
        finish="tool_calls",
    ):
        out += events.chunk(chunk)
    out += events.finish(USAGE, "tool_calls")
    assert [e["type"] for e in out] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert out[4]["content_block"] == {"type": "tool_use", "id": "t1", "name": "w", "input": {}}
    assert out[7]["delta"]["stop_reason"] == "tool_use" and out[7]["usage"] == {
        "input_tokens": 7,
        "output_tokens": 3,
    }


def test_output_guardrails_make_a_native_backend_translate(
    make_envelope: Callable[..., RequestEnvelope],
) -> None:
    payload = {"model": "m", "input": "hi", "previous_response_id": "resp_a", "store": True}
    native = frozenset({Endpoint.RESPONSES})
    plain = dialects.plan(make_envelope(endpoint=Endpoint.RESPONSES, payload=payload), native)
    assert plain.endpoint is Endpoint.RESPONSES and not plain.translated
    assert "previous_response_id" not in plain.payload and plain.payload["store"] is False  # ours to keep
    guarded = dialects.plan(
        make_envelope(
            endpoint=Endpoint.RESPONSES, payload=payload, output_guard=OutputGuardrails(pii="mask")
        ),
        native,
    )
    assert guarded.endpoint is Endpoint.CHAT and guarded.translated
