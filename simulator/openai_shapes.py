"""OpenAI-shaped responses and stream chunks built from the simulated model's tokens."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from schemas.envelope import Endpoint
from simulator.engine import SimulatedModel

Json = dict[str, Any]


def _max_tokens(payload: Json, default: int) -> int:
    value = payload.get("max_completion_tokens") or payload.get("max_tokens") or default
    return int(value)


def _prompt_tokens(endpoint: Endpoint, payload: Json) -> int:
    if endpoint is Endpoint.CHAT:
        text = " ".join(str(m.get("content") or "") for m in payload.get("messages", []))
    else:
        text = str(payload.get("prompt", ""))
    return max(1, len(text.split()))


def _usage(prompt: int, completion: int) -> Json:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def stream_chunks(
    model: SimulatedModel, endpoint: Endpoint, payload: Json, name: str
) -> AsyncIterator[Json]:
    """Chunks for chat or completions; the last one carries usage, as with include_usage."""
    limit = _max_tokens(payload, model.config.default_max_tokens)
    prompt = _prompt_tokens(endpoint, payload)
    chat = endpoint is Endpoint.CHAT
    base: Json = {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": int(time.time()),
        "model": name,
    }
    messages = payload.get("messages") or []
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    last = str(users[-1].get("content") or "") if users else str(payload.get("prompt", ""))
    words = model.scripted(last)
    count = 0
    async for token in model.tokens(limit, words):
        if chat:
            delta: Json = {"content": token}
            if count == 0:
                delta["role"] = "assistant"
            choice: Json = {"index": 0, "delta": delta, "finish_reason": None}
        else:
            choice = {"index": 0, "text": token, "finish_reason": None}
        count += 1
        if count == limit:
            choice["finish_reason"] = "length"
        yield {**base, "choices": [choice]}
    if count < limit:  # a scripted reply ended before max_tokens: a natural stop
        end: Json = (
            {"index": 0, "delta": {}, "finish_reason": "stop"}
            if chat
            else {"index": 0, "text": "", "finish_reason": "stop"}
        )
        yield {**base, "choices": [end]}
    yield {**base, "choices": [], "usage": _usage(prompt, count)}


async def complete(model: SimulatedModel, endpoint: Endpoint, payload: Json, name: str) -> Json:
    if endpoint is Endpoint.EMBEDDINGS:
        raw = payload["input"]
        texts = [raw] if isinstance(raw, str) else [str(item) for item in raw]
        vectors = await model.embed(texts)
        tokens = sum(max(1, len(t.split())) for t in texts)
        return {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
            "model": name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    parts: list[str] = []
    usage: Json = {}
    finish = "stop"
    async for chunk in stream_chunks(model, endpoint, payload, name):
        for choice in chunk["choices"]:
            parts.append(choice["delta"].get("content", "") if endpoint is Endpoint.CHAT else choice["text"])
            finish = choice["finish_reason"] or finish
        usage = chunk.get("usage") or usage
    text = "".join(parts)
    chat = endpoint is Endpoint.CHAT
    choice_out: Json = (
        {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
        if chat
        else {"index": 0, "text": text, "finish_reason": finish}
    )
    return {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": name,
        "choices": [choice_out],
        "usage": usage,
    }
