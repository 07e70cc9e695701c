"""Anthropic's Messages API on any chat model: requests translated to chat completions, answers and
stream chunks translated back into Messages objects and events (`message_start`, content blocks,
`message_delta`, `message_stop`); or a backend's own Messages answers with our ids and model.
"""

from __future__ import annotations

from typing import Any

import orjson

from schemas.openai import Usage

Json = dict[str, Any]

_STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}


def message_id(request_id: str) -> str:
    return f"msg_{request_id}"


# --- the request ---------------------------------------------------------------------------------


def to_chat(payload: Json) -> Json:
    messages: list[Json] = []
    system = payload.get("system")
    if system:
        messages.append({"role": "system", "content": _text(system)})
    for message in payload["messages"]:
        messages += _chat_messages(message)
    chat: Json = {
        "model": payload["model"],
        "messages": messages,
        "max_tokens": payload["max_tokens"],
        "stream": bool(payload.get("stream")),
    }
    for name in ("temperature", "top_p", "top_k"):
        if payload.get(name) is not None:
            chat[name] = payload[name]
    if payload.get("stop_sequences"):
        chat["stop"] = payload["stop_sequences"]
    user = (payload.get("metadata") or {}).get("user_id")
    if user:
        chat["user"] = user
    tools = payload.get("tools")
    if tools:
        chat["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": tool.get("name"),
                    "description": tool.get("description", ""),
                    "parameters": tool.get("input_schema") or {"type": "object"},
                },
            }
            for tool in tools
        ]
    choice = payload.get("tool_choice")
    if isinstance(choice, dict):
        kind = choice.get("type")
        if kind == "tool":
            chat["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
        elif kind in ("auto", "none"):
            chat["tool_choice"] = kind
        elif kind == "any":
            chat["tool_choice"] = "required"
    return chat


def _chat_messages(message: Json) -> list[Json]:
    """One Anthropic turn as chat messages: tool results become `tool` messages (before the user's
    text, as they answer the previous turn), tool uses become the assistant's `tool_calls`."""
    role, content = message["role"], message["content"]
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    out: list[Json] = []
    parts: list[Json] = []
    calls: list[Json] = []
    for block in content:
        kind = block.get("type")
        if kind == "text":
            parts.append({"type": "text", "text": block.get("text", "")})
        elif kind == "image" and isinstance(block.get("source"), dict):
            source = block["source"]
            url = source.get("url") or f"data:{source.get('media_type')};base64,{source.get('data')}"
            parts.append({"type": "image_url", "image_url": {"url": url}})
        elif kind == "tool_use":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": arguments},
                }
            )
        elif kind == "tool_result":
            out.append(
                {
                    "role": "tool",
                    "tool_call_id": block.get("tool_use_id"),
                    "content": _text(block.get("content")),
                }
            )
    if parts or calls:
        text_only = all(part["type"] == "text" for part in parts)
        body: Any = "".join(part["text"] for part in parts) if text_only else parts
        turn: Json = {"role": role, "content": body if parts else None}
        if calls:
            turn["tool_calls"] = calls
        out.append(turn)
    return out


def _text(value: Any) -> str:
    if isinstance(value, list):
        return "".join(str(b.get("text", "")) for b in value if isinstance(b, dict))
    return "" if value is None else str(value)


# --- the answer ----------------------------------------------------------------------------------


def _usage(usage: Usage | None) -> Json:
    return {
        "input_tokens": usage.prompt_tokens if usage else 0,
        "output_tokens": usage.completion_tokens if usage else 0,
    }


def usage_of(raw: Any) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    prompt, completion = int(raw.get("input_tokens") or 0), int(raw.get("output_tokens") or 0)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def _arguments(text: str) -> Any:
    try:
        return orjson.loads(text or "{}")
    except orjson.JSONDecodeError:
        return {"arguments": text}  # a model that wrote broken JSON: keep what it wrote


def from_chat(chat: Json, mid: str, model: str, usage: Usage | None) -> Json:
    choice = (chat.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content: list[Json] = []
    if message.get("content"):
        content.append({"type": "text", "text": str(message["content"])})
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id") or f"toolu_{mid}_{len(content)}",
                "name": function.get("name", ""),
                "input": _arguments(function.get("arguments", "")),
            }
        )
    return {
        "id": mid,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": _STOP.get(str(choice.get("finish_reason")), "end_turn"),
        "stop_sequence": None,
        "usage": _usage(usage),
    }


class MessagesFromChat:
    """Chat completion chunks in, Anthropic stream events out."""

    response: Json | None = None

    def __init__(self, mid: str, model: str) -> None:
        self._mid, self._model = mid, model
        self._started = False
        self._block: int | None = None  # the open content block
        self._kind: str | None = None
        self._calls: dict[int, int] = {}  # chat tool-call index -> block index
        self._blocks = 0
        self.usage: Usage | None = None

    def chunk(self, chunk: Json) -> list[Json]:
        events = self._start()
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if delta.get("content"):
                if self._kind != "text":
                    events += self._open({"type": "text", "text": ""}, "text")
                events.append(self._delta({"type": "text_delta", "text": str(delta["content"])}))
            for call in delta.get("tool_calls") or ():
                position = int(call.get("index", 0))
                function = call.get("function") or {}
                if position not in self._calls:
                    block: Json = {
                        "type": "tool_use",
                        "id": call.get("id") or f"toolu_{self._mid}_{position}",
                        "name": function.get("name") or "",
                        "input": {},
                    }
                    events += self._open(block, "tool_use")
                    self._calls[position] = self._blocks - 1
                if function.get("arguments"):
                    events.append(
                        self._delta({"type": "input_json_delta", "partial_json": function["arguments"]})
                    )
        return events

    def finish(self, usage: Usage | None, finish_reason: str | None) -> list[Json]:
        self.usage = usage
        events = self._start() + self._close()
        stop = _STOP.get(str(finish_reason), "end_turn")
        events.append(
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": _usage(usage),
            }
        )
        return [*events, {"type": "message_stop"}]

    def _start(self) -> list[Json]:
        if self._started:
            return []
        self._started = True
        message: Json = {
            "id": self._mid,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return [{"type": "message_start", "message": message}]

    def _open(self, block: Json, kind: str) -> list[Json]:
        events = self._close()
        self._block, self._kind = self._blocks, kind
        self._blocks += 1
        return [*events, {"type": "content_block_start", "index": self._block, "content_block": block}]

    def _delta(self, delta: Json) -> Json:
        return {"type": "content_block_delta", "index": self._block, "delta": delta}

    def _close(self) -> list[Json]:
        if self._block is None:
            return []
        index, self._block, self._kind = self._block, None, None
        return [{"type": "content_block_stop", "index": index}]


def native_body(body: Json, mid: str, model: str) -> Json:
    return {**body, "id": mid, "model": model, "type": "message", "role": "assistant"}


class NativeMessages:
    """A backend's own Messages events with our ids and model; usage read on the way."""

    response: Json | None = None

    def __init__(self, mid: str, model: str) -> None:
        self._mid, self._model = mid, model
        self._input = 0
        self.usage: Usage | None = None

    def chunk(self, event: Json) -> list[Json]:
        event = dict(event)
        kind = event.get("type")
        if kind == "message_start" and isinstance(event.get("message"), dict):
            event["message"] = native_body(event["message"], self._mid, self._model)
            self._input = int((event["message"].get("usage") or {}).get("input_tokens") or 0)
        elif kind == "message_delta":
            found = usage_of({"input_tokens": self._input, **(event.get("usage") or {})})
            self.usage = found
        return [event]

    def finish(self, usage: Usage | None, finish_reason: str | None) -> list[Json]:
        return []
