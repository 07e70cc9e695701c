"""Every text the model sees is found, and rewritten where it is; token reservations count the values
validation admitted."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from dispatcher.admission.prompt import (
    DEFAULT_COMPLETION_RESERVE,
    completion_budget,
    estimate_tokens,
    input_texts,
    normalized,
    prompt_text,
    rewrite_texts,
)
from dispatcher.admission.validation import parse
from dispatcher.errors import InvalidRequest
from schemas.envelope import Endpoint
from schemas.openai import ChatCompletionRequest, CompletionRequest

REQUEST: dict[str, Any] = {
    "model": "m",
    "user": "user-text",
    "messages": [
        {"role": "system", "content": "system-text", "name": "system-name"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "part-text"},
                {"type": "image_url", "image_url": {"url": "u"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "args-text"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "tool-result-text"},
        {
            "role": "assistant",
            "content": [{"type": "refusal", "refusal": "refusal-text"}],
            "function_call": {"name": "g", "arguments": "legacy-args-text"},
        },
    ],
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "f",
                "description": "tool-description-text",
                "parameters": {
                    "type": "object",
                    "title": "schema-title-text",
                    "properties": {
                        "description": {"type": "string", "description": "param-description-text"},
                        "items": {"type": "array", "items": {"type": "string", "description": "nested-text"}},
                    },
                },
            },
        }
    ],
    "functions": [
        {"name": "g", "description": "function-description-text", "parameters": {"type": "object"}}
    ],
    "response_format": {
        "type": "json_schema",
        "json_schema": {
            "name": "s",
            "description": "format-description-text",
            "schema": {
                "type": "object",
                "properties": {"a": {"type": "string", "description": "format-field-text"}},
            },
        },
    },
}
EVERY_TEXT = {
    "user-text",
    "system-text",
    "system-name",
    "part-text",
    "args-text",
    "tool-result-text",
    "refusal-text",
    "legacy-args-text",
    "tool-description-text",
    "schema-title-text",
    "param-description-text",
    "nested-text",
    "function-description-text",
    "format-description-text",
    "format-field-text",
}


def test_every_text_the_model_sees_is_found() -> None:
    assert set(input_texts(REQUEST)) == EVERY_TEXT


def test_rewrite_changes_every_text_in_place_and_leaves_the_original_alone() -> None:
    before = copy.deepcopy(REQUEST)
    rewritten = rewrite_texts(REQUEST, str.upper)
    assert REQUEST == before
    assert set(input_texts(rewritten)) == {text.upper() for text in EVERY_TEXT}
    # Structure, names and non-text fields are untouched.
    assert rewritten["tools"][0]["function"]["name"] == "f"
    assert rewritten["messages"][1]["content"][1] == before["messages"][1]["content"][1]
    assert set(rewritten["tools"][0]["function"]["parameters"]["properties"]) == {"description", "items"}


def test_nothing_is_copied_when_nothing_changes() -> None:
    assert rewrite_texts(REQUEST, lambda text: text) is REQUEST


def test_prompt_and_embedding_inputs_and_suffix() -> None:
    assert input_texts({"prompt": ["a", "b"], "suffix": "c"}) == ["a", "b", "c"]
    assert input_texts({"input": "x"}) == ["x"]
    assert input_texts({"input": [[1, 2, 3]]}) == []


def test_string_max_tokens_is_reserved_as_the_backend_reads_it() -> None:
    body = {
        "model": "m",
        "max_tokens": "21000",
        "n": "2",
        "stream": "false",
        "messages": [{"role": "user", "content": "hi"}],
    }
    parsed = parse(ChatCompletionRequest, orjson.dumps(body))
    payload = normalized(parsed, body)
    assert payload["max_tokens"] == 21000 and payload["n"] == 2 and payload["stream"] is False
    assert body["max_tokens"] == "21000"  # the caller's dict is not modified
    limit, sequences = completion_budget(parsed)
    assert (limit, sequences) == (21000, 2)
    assert estimate_tokens(Endpoint.CHAT, payload, limit, sequences) > 42_000


def test_an_integer_the_bus_cannot_carry_is_a_bad_request() -> None:
    """Validation reads any integer, orjson only 64 bits (the fuzzer found a 500 on /v1/messages)."""
    body = b'{"model": "m", "max_tokens": 123456789012345678901234567890, "messages": [{"role": "user", "content": "x"}]}'
    parsed = parse(ChatCompletionRequest, body)
    with pytest.raises(InvalidRequest, match="max_tokens: the number is out of range"):
        normalized(parsed, orjson.loads(body))


def test_max_completion_tokens_wins_and_best_of_counts() -> None:
    chat = parse(
        ChatCompletionRequest,
        orjson.dumps(
            {
                "model": "m",
                "max_tokens": 10,
                "max_completion_tokens": 300,
                "messages": [{"role": "user", "content": "x"}],
            }
        ),
    )
    assert completion_budget(chat) == (300, 1)
    legacy = parse(
        CompletionRequest,
        orjson.dumps({"model": "m", "prompt": "x", "max_tokens": 5.0, "n": 2, "best_of": 4}),
    )
    assert completion_budget(legacy) == (5, 4)
    assert estimate_tokens(Endpoint.COMPLETIONS, {"prompt": "x"}, None, 1) >= DEFAULT_COMPLETION_RESERVE


def test_unchanged_payload_is_the_same_object() -> None:
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    assert normalized(parse(ChatCompletionRequest, orjson.dumps(body)), body) is body


RESPONSES_REQUEST: dict[str, Any] = {
    "model": "m",
    "instructions": "instructions-text",
    "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "input-text"}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "call-args-text"},
        {"type": "function_call_output", "call_id": "c1", "output": "call-output-text"},
    ],
    "tools": [{"type": "function", "name": "f", "description": "flat-tool-text", "parameters": {}}],
    "text": {"format": {"type": "json_schema", "name": "s", "schema": {"description": "format-text"}}},
}
MESSAGES_REQUEST: dict[str, Any] = {
    "model": "m",
    "max_tokens": 5,
    "system": [{"type": "text", "text": "system-block-text"}],
    "messages": [
        {"role": "user", "content": "user-text"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {"q": "use-text"}}],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "result-text"}]},
    ],
    "tools": [{"name": "f", "description": "anthropic-tool-text", "input_schema": {"title": "schema-text"}}],
}


def test_responses_and_messages_texts_are_all_found_and_rewritten() -> None:
    expected = {
        "instructions-text", "input-text", "call-args-text", "call-output-text", "flat-tool-text", "format-text",
    }  # fmt: skip
    assert set(input_texts(RESPONSES_REQUEST)) == expected
    anthropic = {
        "system-block-text",
        "user-text",
        "use-text",
        "result-text",
        "anthropic-tool-text",
        "schema-text",
    }
    assert set(input_texts(MESSAGES_REQUEST)) == anthropic
    for request in (RESPONSES_REQUEST, MESSAGES_REQUEST):
        before = copy.deepcopy(request)
        masked = rewrite_texts(request, lambda text: "X" * len(text))
        assert all(set(text) == {"X"} for text in input_texts(masked))
        assert request == before  # the caller's payload is never modified


def test_rerank_and_tokenize_texts_are_found_and_cost_their_input_only() -> None:
    rerank = {"model": "m", "query": "query-text", "documents": ["doc-text", {"text": "doc-object-text"}]}
    assert input_texts(rerank) == ["query-text", "doc-text", "doc-object-text"]
    assert input_texts({"model": "m", "content": "tokenize-text"}) == ["tokenize-text"]
    assert estimate_tokens(Endpoint.RERANK, rerank) < DEFAULT_COMPLETION_RESERVE
    assert estimate_tokens(Endpoint.DETOKENIZE, {"model": "m", "tokens": [1] * 40}) == 40
    score = {"model": "m", "text_1": "first-text", "text_2": ["second-a", "second-b"]}
    assert input_texts(score) == ["first-text", "second-a", "second-b"]
    assert prompt_text(score) == "first-text"
    assert estimate_tokens(Endpoint.SCORE, score) < DEFAULT_COMPLETION_RESERVE
