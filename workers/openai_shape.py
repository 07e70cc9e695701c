"""Backend answers brought into OpenAI's response shape, whatever server produced them.

Seen in the wild: TGI's `eos_token` finish reason, llama.cpp and Ollama omitting `created` or
`object`, usage without `total_tokens`, streams whose chunks lack a choice `index`, chat messages
without a `role`. Clients (the official SDK among them) validate these fields, so the worker fixes
them once, here, for every backend. Ids and model names are always ours: the backend's own model id
is an implementation detail the client must not depend on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from schemas.envelope import Endpoint, RequestEnvelope

Json = dict[str, Any]

_FINISH = {
    "eos_token": "stop",  # TGI
    "eos": "stop",
    "stop_sequence": "stop",
    "end_turn": "stop",
    "max_tokens": "length",
    "length": "length",
    "stop": "stop",
    "tool_calls": "tool_calls",
    "function_call": "function_call",
    "content_filter": "content_filter",
}
_OBJECT = {
    (Endpoint.CHAT, False): "chat.completion",
    (Endpoint.CHAT, True): "chat.completion.chunk",
    (Endpoint.COMPLETIONS, False): "text_completion",
    (Endpoint.COMPLETIONS, True): "text_completion",
    (Endpoint.EMBEDDINGS, False): "list",
}
_PREFIX = {Endpoint.CHAT: "chatcmpl", Endpoint.COMPLETIONS: "cmpl"}
_GENERATIONS = (Endpoint.CHAT, Endpoint.COMPLETIONS, Endpoint.EMBEDDINGS)


def normalize(
    body: Json, envelope: RequestEnvelope, chunk: bool = False, endpoint: Endpoint | None = None
) -> None:
    """Fix `body` (a whole response, or one stream chunk) of `endpoint` (default: the envelope's) in
    place. Rerank and tokenizer answers keep the backend's shape: only a model name becomes ours."""
    endpoint = endpoint or envelope.endpoint
    if endpoint not in _GENERATIONS:
        if "model" in body:
            body["model"] = envelope.target
        return
    prefix = _PREFIX.get(endpoint)
    if prefix:
        body["id"] = f"{prefix}-{envelope.id}"
        body.setdefault("created", int(time.time()))
    body["model"] = envelope.target
    body["object"] = _OBJECT.get((endpoint, chunk), body.get("object"))
    _usage_and_choices(body, endpoint, chunk)


def chunk_shaper(envelope: RequestEnvelope, endpoint: Endpoint) -> Callable[[Json], None]:
    """`normalize(chunk, envelope, chunk=True, endpoint=endpoint)` for the chunks of one chat or
    completions stream, with what is the same for all of them worked out once (the id, the object
    name, `created` when the backend leaves it out: one time for the whole stream, as OpenAI does)."""
    prefix = _PREFIX[endpoint]
    ident = f"{prefix}-{envelope.id}"
    model = envelope.target
    kind = _OBJECT[(endpoint, True)]
    created = int(time.time())

    def shape(chunk: Json) -> None:
        chunk["id"] = ident
        if "created" not in chunk:
            chunk["created"] = created
        chunk["model"] = model
        chunk["object"] = kind
        _usage_and_choices(chunk, endpoint, True)

    return shape


def _usage_and_choices(body: Json, endpoint: Endpoint, chunk: bool) -> None:
    usage = body.get("usage")
    if isinstance(usage, dict):
        _usage(usage)
    choices = body.get("choices")
    if isinstance(choices, list):
        for position, choice in enumerate(choices):
            if isinstance(choice, dict):
                _choice(choice, position, endpoint, chunk)


def _usage(usage: Json) -> None:
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens")
    usage["prompt_tokens"] = prompt = prompt if isinstance(prompt, int) else 0
    usage["completion_tokens"] = completion = completion if isinstance(completion, int) else 0
    if not isinstance(usage.get("total_tokens"), int) or not usage["total_tokens"]:
        usage["total_tokens"] = prompt + completion


def _choice(choice: Json, position: int, endpoint: Endpoint, chunk: bool) -> None:
    if not isinstance(choice.get("index"), int):
        choice["index"] = position
    finish = choice.get("finish_reason")
    if finish is not None:
        choice["finish_reason"] = _FINISH.get(str(finish), "stop")
    elif not chunk:
        choice["finish_reason"] = "stop"
    if endpoint is Endpoint.CHAT:
        key = "delta" if chunk else "message"
        message = choice.get(key)
        if not isinstance(message, dict):
            choice[key] = message = {}
        if not chunk:
            message.setdefault("role", "assistant")
            message.setdefault("content", None)
    elif endpoint is Endpoint.COMPLETIONS and not isinstance(choice.get("text"), str):
        choice["text"] = ""
