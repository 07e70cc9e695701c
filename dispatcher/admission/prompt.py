"""What a request says: every text the model will see, read and rewritten in one place so routing,
guardrails and token estimates all see the same words.

A model sees more than message contents: tool-call arguments, tool and function descriptions (and
the descriptions inside their parameter schemas), message `name`s, `user`, a response-format schema's
descriptions, a completion's `suffix`. Any of them can carry an injection or personal data, so the
guardrails scan them all and masking rewrites them where they are. The Responses API adds
`instructions`, input items (messages, function calls and their outputs) and `text.format`; the
Messages API `system`, `tool_use` inputs, `tool_result` contents and `input_schema`; rerank its query
and documents; tokenize its `content`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from dispatcher.errors import InvalidRequest
from schemas.envelope import Endpoint

# Without max_tokens a completion is reserved this many tokens; the worker settles the difference.
DEFAULT_COMPLETION_RESERVE = 256
_CHARS_PER_TOKEN = 4  # a conservative average for English-like text and common BPE vocabularies
_PER_TEXT = 4  # role, separators, field names
_SCHEMA_TEXT_KEYS = ("description", "title")
# Endpoints that generate nothing: a request costs its input only.
_PROMPT_ONLY = frozenset(
    {Endpoint.EMBEDDINGS, Endpoint.RERANK, Endpoint.SCORE, Endpoint.TOKENIZE, Endpoint.DETOKENIZE}
)

Change = Callable[[str], str]


def prompt_text(payload: dict[str, Any]) -> str:
    """The user's words: every user message's text (chat, Messages, Responses items), the prompt
    (completions) or the input (a Responses string, embeddings), the query (rerank)."""
    for name in ("messages", "input"):
        items = payload.get(name)
        if isinstance(items, list) and any(isinstance(item, dict) for item in items):
            texts: list[str] = []
            for item in items:
                if isinstance(item, dict) and item.get("role") == "user":
                    _content(item.get("content"), _collect(texts))
            return "\n".join(texts)
    for name in ("prompt", "input", "query", "content", "text_1"):
        value = payload.get(name)
        if isinstance(value, str):
            return value
        if name == "text_1" and isinstance(value, list):
            return "\n".join(str(text) for text in value)
    return ""


def input_texts(payload: dict[str, Any]) -> list[str]:
    """Every text the client sends to the model, wherever it sits in the request."""
    texts: list[str] = []
    visit_texts(payload, _collect(texts))
    return texts


def rewrite_texts(payload: dict[str, Any], change: Change) -> dict[str, Any]:
    """`payload` with `change` applied to every text `input_texts` finds; containers are copied only
    where something changed, so the caller's payload is never modified."""
    return visit_texts(payload, change)


def visit_texts(payload: dict[str, Any], change: Change) -> dict[str, Any]:
    out = payload
    out = _field(out, "messages", lambda messages: _list(messages, _message, change))
    for name in ("prompt", "input", "suffix", "user", "instructions", "query", "content", "text_1", "text_2"):
        out = _field(out, name, lambda value: _strings(value, change))
    out = _field(out, "system", lambda system: _content(system, change))
    out = _field(out, "documents", lambda documents: _list(documents, _document, change))
    for name in ("tools", "functions"):
        out = _field(out, name, lambda tools: _list(tools, _tool, change))
    out = _field(out, "response_format", lambda fmt: _response_format(fmt, change))
    out = _field(out, "text", lambda text: _text_format(text, change))
    return out


def estimate_tokens(
    endpoint: Endpoint, payload: dict[str, Any], max_output: int | None = None, sequences: int = 1
) -> int:
    """Prompt tokens (estimated from characters) plus the most the completion may use.

    `max_output` and `sequences` come from the validated request (see `completion_budget`), so a
    limit sent as a string or a float counts exactly as the backend will apply it.
    """
    prompt = estimate_prompt_tokens(payload)
    if endpoint in _PROMPT_ONLY:
        return prompt
    return prompt + completion_reserve(max_output, sequences)


def estimate_prompt_tokens(payload: dict[str, Any]) -> int:
    chars = 0
    pieces = 0
    for text in input_texts(payload):
        chars += len(text)
        pieces += 1
    for name in ("prompt", "input"):  # token-id inputs count one token per id
        value = payload.get(name)
        if isinstance(value, list):
            chars += _CHARS_PER_TOKEN * sum(
                len(v) if isinstance(v, list) else 1 for v in value if not isinstance(v, str)
            )
    tokens = payload.get("tokens")  # detokenize
    if isinstance(tokens, list):
        chars += _CHARS_PER_TOKEN * len(tokens)
    return math.ceil(chars / _CHARS_PER_TOKEN) + _PER_TEXT * pieces


def completion_reserve(max_output: int | None, sequences: int = 1) -> int:
    """The most the completion may use: `max_output` per sequence, or the default reserve."""
    completion = max_output if max_output is not None and max_output > 0 else DEFAULT_COMPLETION_RESERVE
    return completion * max(sequences, 1)


def completion_budget(parsed: BaseModel) -> tuple[int | None, int]:
    """(the most tokens one sequence may generate, how many sequences) of a validated request.

    `max_completion_tokens` wins over the older `max_tokens`, as OpenAI and vLLM apply them; `best_of`
    (legacy completions) generates that many sequences even when fewer are returned.
    """
    limit = (
        getattr(parsed, "max_completion_tokens", None)
        or getattr(parsed, "max_output_tokens", None)  # Responses API
        or getattr(parsed, "max_tokens", None)
    )
    sequences = max(getattr(parsed, "n", None) or 1, getattr(parsed, "best_of", None) or 1)
    return limit, sequences


_INT64_MIN, _UINT64_MAX = -(2**63), 2**64 - 1


def normalized(parsed: BaseModel, payload: dict[str, Any]) -> dict[str, Any]:
    """`payload` with each declared scalar field as validation coerced it (`"21000"` -> 21000,
    `"false"` -> False), so the backend reads exactly the values the gateway admitted."""
    out = payload
    for name in type(parsed).model_fields:
        if name not in payload:
            continue
        value = getattr(parsed, name)
        if isinstance(value, int) and not _INT64_MIN <= value <= _UINT64_MAX:
            # Validation reads any integer; the bus (orjson) carries 64 bits. Found by the fuzzer.
            raise InvalidRequest(f"{name}: the number is out of range", "invalid_value", name)
        if value is None or isinstance(value, (bool, int, float, str)):
            raw = payload[name]
            if type(raw) is not type(value) or raw != value:
                if out is payload:
                    out = dict(payload)
                out[name] = value
    return out


# --- where the texts are -------------------------------------------------------------------------


def _collect(texts: list[str]) -> Change:
    def keep(text: str) -> str:
        texts.append(text)
        return text

    return keep


def _field(holder: dict[str, Any], name: str, visit: Callable[[Any], Any]) -> dict[str, Any]:
    value = holder.get(name)
    if value is None:
        return holder
    new = visit(value)
    if new is value:
        return holder
    return {**holder, name: new}


def _list(items: Any, visit: Callable[[Any, Change], Any], change: Change) -> Any:
    if not isinstance(items, list):
        return items
    out: list[Any] | None = None
    for i, item in enumerate(items):
        new = visit(item, change)
        if new is not item:
            if out is None:
                out = list(items)
            out[i] = new
    return out if out is not None else items


def _strings(value: Any, change: Change) -> Any:
    """A string, or a list of strings (embeddings) or of Responses input items."""
    if isinstance(value, str):
        return change(value)
    if isinstance(value, list):
        return _list(value, _string_or_item, change)
    return value


def _string_or_item(item: Any, change: Change) -> Any:
    if isinstance(item, str):
        return change(item)
    if not isinstance(item, dict):
        return item  # a token id
    # A Responses input item: a function call (its arguments, not its name), a call's output, or a
    # message.
    kind = item.get("type")
    if kind == "function_call":
        return _field(item, "arguments", lambda args: change(args) if isinstance(args, str) else args)
    if kind == "function_call_output":
        return _field(item, "output", lambda output: _content(output, change))
    return _message(item, change)


def _document(document: Any, change: Change) -> Any:
    """A rerank document: a string, or an object with `text`."""
    if isinstance(document, str):
        return change(document)
    return _part(document, change)


def _json_strings(value: Any, change: Change) -> Any:
    """Every string inside a JSON value (an Anthropic `tool_use` input the model wrote)."""
    if isinstance(value, str):
        return change(value)
    if isinstance(value, list):
        return _list(value, _json_strings, change)
    if isinstance(value, dict):
        out = value
        for key in value:
            out = _field(out, key, lambda inner: _json_strings(inner, change))
        return out
    return value


def _content(content: Any, change: Change) -> Any:
    if isinstance(content, str):
        return change(content)
    return _list(content, _part, change)


def _part(part: Any, change: Change) -> Any:
    if not isinstance(part, dict):
        return part
    out = part
    for name in ("text", "refusal"):
        out = _field(out, name, lambda value: change(value) if isinstance(value, str) else value)
    if part.get("type") == "tool_use":  # Anthropic: the arguments of a call the model made
        out = _field(out, "input", lambda value: _json_strings(value, change))
    if part.get("type") == "tool_result":  # Anthropic: what the tool answered
        out = _field(out, "content", lambda value: _content(value, change))
    return out


def _message(message: Any, change: Change) -> Any:
    if not isinstance(message, dict):
        return message
    out = _field(message, "content", lambda content: _content(content, change))
    out = _field(out, "name", lambda name: change(name) if isinstance(name, str) else name)
    out = _field(out, "tool_calls", lambda calls: _list(calls, _tool_call, change))
    return _field(out, "function_call", lambda call: _arguments(call, change))


def _tool_call(call: Any, change: Change) -> Any:
    if not isinstance(call, dict):
        return call
    return _field(call, "function", lambda function: _arguments(function, change))


def _arguments(function: Any, change: Change) -> Any:
    if not isinstance(function, dict):
        return function
    return _field(function, "arguments", lambda args: change(args) if isinstance(args, str) else args)


def _tool(tool: Any, change: Change) -> Any:
    """A tool (`{"type": "function", "function": {...}}`) or a legacy function definition."""
    if not isinstance(tool, dict):
        return tool
    if isinstance(tool.get("function"), dict):
        return _field(tool, "function", lambda function: _definition(function, change))
    return _definition(tool, change)


def _definition(function: dict[str, Any], change: Change) -> dict[str, Any]:
    out = _field(function, "description", lambda text: change(text) if isinstance(text, str) else text)
    out = _field(out, "input_schema", lambda schema: _schema(schema, change))  # Anthropic
    return _field(out, "parameters", lambda schema: _schema(schema, change))


def _response_format(fmt: Any, change: Change) -> Any:
    if not isinstance(fmt, dict) or not isinstance(fmt.get("json_schema"), dict):
        return fmt
    return _field(fmt, "json_schema", lambda spec: _definition_schema(spec, change))


def _text_format(text: Any, change: Change) -> Any:
    """The Responses API's `text: {"format": {"type": "json_schema", "schema": ...}}`."""
    if not isinstance(text, dict) or not isinstance(text.get("format"), dict):
        return text
    return _field(text, "format", lambda fmt: _definition_schema(fmt, change))


def _definition_schema(spec: dict[str, Any], change: Change) -> dict[str, Any]:
    out = _field(spec, "description", lambda text: change(text) if isinstance(text, str) else text)
    return _field(out, "schema", lambda schema: _schema(schema, change))


def _schema(node: Any, change: Change) -> Any:
    """Descriptions and titles anywhere in a JSON schema (the model reads them as instructions)."""
    if isinstance(node, list):
        return _list(node, _schema, change)
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] | None = None
    for key, value in node.items():
        if key in _SCHEMA_TEXT_KEYS and isinstance(value, str):
            new = change(value)
        elif isinstance(value, (dict, list)):
            new = _schema(value, change)
        else:
            continue
        if new is not value:
            if out is None:
                out = dict(node)
            out[key] = new
    return out if out is not None else node
