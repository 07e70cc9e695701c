"""OpenAI-shaped responses and stream chunks built from the simulated model's tokens."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from schemas.envelope import Endpoint
from simulator import retrieval
from simulator.engine import SimulatedBadRequest, SimulatedModel

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


def _last_text(payload: Json) -> str:
    """What a scripted reply is matched against: the last user message, or the tool's answer when the
    conversation ends with one (so a script can answer after its own tool call), or the prompt."""
    messages = [m for m in payload.get("messages") or [] if isinstance(m, dict)]
    if messages and messages[-1].get("role") == "tool":
        return str(messages[-1].get("content") or "")
    users = [m for m in messages if m.get("role") == "user"]
    return str(users[-1].get("content") or "") if users else str(payload.get("prompt", ""))


async def stream_chunks(
    model: SimulatedModel, endpoint: Endpoint, payload: Json, name: str
) -> AsyncIterator[Json]:
    """Chunks for chat or completions; the last one carries usage, as with include_usage."""
    limit = _max_tokens(payload, model.config.default_max_tokens)
    prompt = _prompt_tokens(endpoint, payload)
    context = model.config.context_length
    if prompt + limit > context:
        # vLLM's words, which clients (and the gateway) recognize as a context overflow.
        raise SimulatedBadRequest(
            f"This model's maximum context length is {context} tokens. However, you requested "
            f"{prompt + limit} tokens ({prompt} in the messages, {limit} in the completion). "
            "Please reduce the length of the messages or completion."
        )
    chat = endpoint is Endpoint.CHAT
    base: Json = {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": int(time.time()),
        "model": name,
    }
    scripted = model.scripted(_last_text(payload))
    words, calls = scripted if scripted is not None else (None, [])
    if not (chat and payload.get("tools")):
        calls = []
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
    for index, call in enumerate(calls):
        head: Json = {"index": index, "id": f"call_{uuid.uuid4().hex[:24]}", "type": "function"}
        head["function"] = {"name": call.name, "arguments": ""}
        opening: Json = {"tool_calls": [head]}
        if count == 0 and index == 0:
            opening["role"] = "assistant"
        yield {**base, "choices": [{"index": 0, "delta": opening, "finish_reason": None}]}
        for piece in (call.arguments[i : i + 8] for i in range(0, len(call.arguments), 8)):
            delta = {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}
            yield {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
            count += 1
    if calls or count < limit:  # a scripted reply ended before max_tokens: a natural stop
        reason = "tool_calls" if calls else "stop"
        end: Json = (
            {"index": 0, "delta": {}, "finish_reason": reason}
            if chat
            else {"index": 0, "text": "", "finish_reason": reason}
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
    if endpoint in (Endpoint.RERANK, Endpoint.SCORE, Endpoint.TOKENIZE, Endpoint.DETOKENIZE):
        return retrieval.answer(model, endpoint, payload, name)
    parts: list[str] = []
    calls: dict[int, Json] = {}
    usage: Json = {}
    finish = "stop"
    async for chunk in stream_chunks(model, endpoint, payload, name):
        for choice in chunk["choices"]:
            if endpoint is Endpoint.CHAT:
                parts.append(choice["delta"].get("content", ""))
                for call in choice["delta"].get("tool_calls") or ():
                    whole = calls.setdefault(call["index"], {"function": {"arguments": ""}})
                    whole.update({k: v for k, v in call.items() if k not in ("index", "function")})
                    function = call.get("function") or {}
                    whole["function"].setdefault("name", function.get("name"))
                    whole["function"]["arguments"] += function.get("arguments", "")
            else:
                parts.append(choice["text"])
            finish = choice["finish_reason"] or finish
        usage = chunk.get("usage") or usage
    text = "".join(parts)
    chat = endpoint is Endpoint.CHAT
    message: Json = {"role": "assistant", "content": text or (None if calls else "")}
    if calls:
        message["tool_calls"] = [calls[index] for index in sorted(calls)]
    choice_out: Json = (
        {"index": 0, "message": message, "finish_reason": finish}
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
