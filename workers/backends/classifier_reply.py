"""What an injection classifier backend reads from a request and how it answers: the user text of a
chat or completion request in, one word ("injection" or "safe") out, in OpenAI's shape, which is what
dispatcher/admission/classifier.py asks for and parses. Shared by every classifier backend."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

from schemas.envelope import Endpoint
from workers.backends.base import Json


def prompt_of(endpoint: Endpoint, payload: Json) -> str:
    """What to classify: the user messages' text (the instruction in a system message is the
    gateway's own), or the prompt of a completion."""
    if endpoint is Endpoint.COMPLETIONS:
        prompt = payload.get("prompt")
        return prompt if isinstance(prompt, str) else ""
    texts: list[str] = []
    for message in payload.get("messages") or ():
        if not isinstance(message, dict) or message.get("role") == "system":
            continue
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts.extend(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return "\n".join(texts)


def verdict_body(endpoint: Endpoint, model: str, text: str, injection: bool) -> Json:
    answer = "injection" if injection else "safe"
    usage = {"prompt_tokens": len(text) // 4, "completion_tokens": 1, "total_tokens": len(text) // 4 + 1}
    choice: Json = {"index": 0, "finish_reason": "stop"}
    if endpoint is Endpoint.CHAT:
        choice["message"] = {"role": "assistant", "content": answer}
    else:
        choice["text"] = answer
    return {
        "id": "cls-" + uuid.uuid4().hex,
        "object": "chat.completion" if endpoint is Endpoint.CHAT else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": usage,
    }


async def as_stream(body: Json) -> AsyncIterator[Json]:
    """A one-word answer as the one chunk of a stream."""
    choice = body["choices"][0]
    delta = {"role": "assistant", "content": choice["message"]["content"]} if "message" in choice else None
    first = {**body, "object": "chat.completion.chunk" if delta else "text_completion"}
    first["choices"] = [{"index": 0, "delta": delta, "finish_reason": "stop"} if delta else choice]
    yield first
