"""What a request says: its texts (for routing, guardrails and token estimates), read and rewritten
in one place so every policy sees the same words."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

from schemas.envelope import Endpoint

# Without max_tokens a completion is reserved this many tokens; the worker settles the difference.
DEFAULT_COMPLETION_RESERVE = 256
_CHARS_PER_TOKEN = 4  # a conservative average for English-like text and common BPE vocabularies
_PER_MESSAGE = 4  # role and separators


def prompt_text(payload: dict[str, Any]) -> str:
    """The user's words: every user message's text (chat) or the prompt (completions)."""
    messages = payload.get("messages")
    if isinstance(messages, list):
        return "\n".join(
            text
            for message in messages
            if _is_user(message)
            for text in _content_texts(message.get("content"))
        )
    prompt = payload.get("prompt")
    return prompt if isinstance(prompt, str) else ""


def input_texts(payload: dict[str, Any]) -> Iterator[str]:
    """Every text the client sends to the model: all messages, the prompt, embedding inputs."""
    messages = payload.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict):
                yield from _content_texts(message.get("content"))
    for field in ("prompt", "input"):
        value = payload.get(field)
        if isinstance(value, str):
            yield value
        elif isinstance(value, list):
            yield from (item for item in value if isinstance(item, str))


def rewrite_texts(payload: dict[str, Any], change: Callable[[str], str]) -> dict[str, Any]:
    """A copy of `payload` with `change` applied to every text `input_texts` yields."""
    out = dict(payload)
    messages = payload.get("messages")
    if isinstance(messages, list):
        out["messages"] = [
            {**m, "content": _rewrite_content(m.get("content"), change)} if isinstance(m, dict) else m
            for m in messages
        ]
    for field in ("prompt", "input"):
        value = payload.get(field)
        if isinstance(value, str):
            out[field] = change(value)
        elif isinstance(value, list):
            out[field] = [change(v) if isinstance(v, str) else v for v in value]
    return out


def estimate_tokens(endpoint: Endpoint, payload: dict[str, Any]) -> int:
    """Prompt tokens (estimated from characters) plus the most the completion may use."""
    chars = 0
    pieces = 0
    for text in input_texts(payload):
        chars += len(text)
        pieces += 1
    for field in ("prompt", "input"):  # token-id inputs count one token per id
        value = payload.get(field)
        if isinstance(value, list):
            chars += _CHARS_PER_TOKEN * sum(
                len(v) if isinstance(v, list) else 1 for v in value if not isinstance(v, str)
            )
    prompt = math.ceil(chars / _CHARS_PER_TOKEN) + _PER_MESSAGE * pieces
    if endpoint is Endpoint.EMBEDDINGS:
        return prompt
    limit = payload.get("max_completion_tokens") or payload.get("max_tokens")
    completion = limit if isinstance(limit, int) and limit > 0 else DEFAULT_COMPLETION_RESERVE
    choices = payload.get("n")
    return prompt + completion * (choices if isinstance(choices, int) and choices > 0 else 1)


def _is_user(message: object) -> bool:
    return isinstance(message, dict) and message.get("role") == "user"


def _content_texts(content: object) -> Iterator[str]:
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                yield part["text"]


def _rewrite_content(content: object, change: Callable[[str], str]) -> object:
    if isinstance(content, str):
        return change(content)
    if isinstance(content, list):
        return [
            {**part, "text": change(part["text"])}
            if isinstance(part, dict) and isinstance(part.get("text"), str)
            else part
            for part in content
        ]
    return content
