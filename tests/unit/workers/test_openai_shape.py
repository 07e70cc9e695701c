"""Backend quirks become OpenAI's shape: what TGI, llama.cpp and Ollama really send, fixed once."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.completion import Completion

from schemas.envelope import Endpoint, RequestEnvelope
from workers.openai_shape import chunk_shaper, normalize


def test_tgi_chat_with_eos_token_and_partial_usage_validates_with_the_sdk(
    make_envelope: Callable[..., RequestEnvelope],
) -> None:
    body = {
        "id": "",
        "object": "chat.completion",
        "model": "tgi",
        "system_fingerprint": "2.0.4-native",
        "choices": [{"message": {"content": "hi"}, "finish_reason": "eos_token", "logprobs": None}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2},
    }
    normalize(body, make_envelope(id="r1", endpoint=Endpoint.CHAT))
    parsed = ChatCompletion.model_validate(body)
    assert parsed.id == "chatcmpl-r1" and parsed.model == "m" and parsed.created > 0
    assert parsed.choices[0].finish_reason == "stop" and parsed.choices[0].index == 0
    assert parsed.choices[0].message.role == "assistant"
    assert parsed.usage is not None and parsed.usage.total_tokens == 7


def test_stream_chunk_without_index_or_object(make_envelope: Callable[..., RequestEnvelope]) -> None:
    chunk = {"choices": [{"delta": {"content": "x"}, "finish_reason": None}], "model": "llama.gguf"}
    normalize(chunk, make_envelope(id="r1", endpoint=Endpoint.CHAT), chunk=True)
    parsed = ChatCompletionChunk.model_validate(chunk)
    assert parsed.object == "chat.completion.chunk" and parsed.choices[0].index == 0
    assert parsed.choices[0].finish_reason is None  # a chunk mid-stream is not finished


def test_ollama_completion_with_length_and_missing_text(
    make_envelope: Callable[..., RequestEnvelope],
) -> None:
    body = {
        "choices": [{"finish_reason": "max_tokens"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 0},
    }
    normalize(body, make_envelope(id="r1", endpoint=Endpoint.COMPLETIONS))
    parsed = Completion.model_validate(body)
    assert parsed.choices[0].finish_reason == "length" and parsed.choices[0].text == ""
    assert parsed.usage is not None and parsed.usage.total_tokens == 7


@pytest.mark.parametrize("endpoint", [Endpoint.CHAT, Endpoint.COMPLETIONS])
def test_the_per_stream_chunk_shaper_does_what_normalize_does(
    make_envelope: Callable[..., RequestEnvelope], endpoint: Endpoint
) -> None:
    envelope = make_envelope()
    chunks: list[dict[str, Any]] = [
        {"id": "x", "created": 5, "model": "backend-name", "choices": [{"delta": {"content": "a"}}]},
        {"choices": [{"index": 0, "delta": None, "finish_reason": "eos_token", "text": 3}], "usage": {}},
        {"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 3}},
        {"choices": ["not a choice", {"finish_reason": "weird"}]},
    ]
    shape = chunk_shaper(envelope, endpoint)
    for chunk in chunks:
        expected, shaped = copy.deepcopy(chunk), copy.deepcopy(chunk)
        normalize(expected, envelope, chunk=True, endpoint=endpoint)
        shape(shaped)
        if "created" not in chunk:  # one time for the whole stream, not one per chunk
            expected["created"] = shaped["created"]
        assert shaped == expected
