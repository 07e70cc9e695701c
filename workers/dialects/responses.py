"""OpenAI's Responses API on any chat model: requests translated to chat completions, answers and
stream chunks translated back into Responses objects and typed events; or, for a backend that serves
the API itself, its answers brought to the same shape (ids, model, sequence numbers, echoed fields).

A response's id is `resp_<request id>`: the id the worker stores it under (dispatcher/
stored_responses.py) and the one `previous_response_id` names.
"""

from __future__ import annotations

import time
from typing import Any

from schemas.dialects import input_items
from schemas.openai import Usage

Json = dict[str, Any]

# Fields of the request that a Response object echoes back.
_ECHOED = (
    "instructions",
    "max_output_tokens",
    "metadata",
    "parallel_tool_calls",
    "previous_response_id",
    "temperature",
    "text",
    "tool_choice",
    "tools",
    "top_p",
    "user",
)
_DEFAULTS: Json = {
    "parallel_tool_calls": True,
    "tool_choice": "auto",
    "tools": [],
    "text": {"format": {"type": "text"}},
    "metadata": {},
}
# Sent to a backend that serves the API itself: the conversation is ours, already expanded.
_GATEWAY_ONLY = ("previous_response_id", "store", "stream_options")


def response_id(request_id: str) -> str:
    return f"resp_{request_id}"


# --- the request ---------------------------------------------------------------------------------


def native_request(payload: Json) -> Json:
    return {k: v for k, v in payload.items() if k not in _GATEWAY_ONLY} | {"store": False}


def to_chat(payload: Json) -> Json:
    """A chat completions request that asks the model the same thing."""
    messages: list[Json] = []
    if payload.get("instructions"):
        messages.append({"role": "system", "content": payload["instructions"]})
    for item in input_items(payload["input"]):
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role", "user")
            messages.append({"role": "system" if role == "developer" else role, "content": _content(item)})
        elif kind == "function_call":
            call = {
                "id": item.get("call_id"),
                "type": "function",
                "function": {"name": item.get("name"), "arguments": item.get("arguments", "")},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and last.get("tool_calls"):
                last["tool_calls"].append(call)  # parallel calls are one assistant turn
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            text = output if isinstance(output, str) else _text(output)
            messages.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": text})
    chat: Json = {"model": payload["model"], "messages": messages, "stream": bool(payload.get("stream"))}
    for name in ("temperature", "top_p", "user", "parallel_tool_calls", "seed", "top_logprobs"):
        if payload.get(name) is not None:
            chat[name] = payload[name]
    if payload.get("max_output_tokens") is not None:
        chat["max_tokens"] = payload["max_output_tokens"]
    if payload.get("tools"):
        chat["tools"] = [_chat_tool(tool) for tool in payload["tools"]]
    choice = payload.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "function":
        chat["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
    elif choice is not None:
        chat["tool_choice"] = choice
    fmt = (payload.get("text") or {}).get("format") if isinstance(payload.get("text"), dict) else None
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        chat["response_format"] = {"type": "json_schema", "json_schema": schema}
    elif isinstance(fmt, dict) and fmt.get("type") == "json_object":
        chat["response_format"] = {"type": "json_object"}
    return chat


def _content(item: Json) -> Any:
    content = item.get("content")
    if not isinstance(content, list):
        return content
    parts: list[Json] = []
    for part in content:
        if not isinstance(part, dict):
            continue
        if part.get("type") in ("input_text", "output_text", "text"):
            parts.append({"type": "text", "text": part.get("text", "")})
        elif part.get("type") == "input_image" and part.get("image_url"):
            parts.append({"type": "image_url", "image_url": {"url": part["image_url"]}})
    if all(part["type"] == "text" for part in parts):
        return "".join(part["text"] for part in parts)  # plain text suits every chat template
    return parts


def _text(value: Any) -> str:
    if isinstance(value, list):
        return "".join(str(p.get("text", "")) for p in value if isinstance(p, dict))
    return "" if value is None else str(value)


def _chat_tool(tool: Json) -> Json:
    function = {k: tool[k] for k in ("name", "description", "parameters", "strict") if k in tool}
    return {"type": "function", "function": function}


# --- the answer ----------------------------------------------------------------------------------


def skeleton(payload: Json, rid: str, model: str, created_at: int, store: bool) -> Json:
    """A Response object before any output: what `response.created` carries."""
    body: Json = {
        "id": rid,
        "object": "response",
        "created_at": created_at,
        "status": "in_progress",
        "model": model,
        "output": [],
        "error": None,
        "incomplete_details": None,
        "usage": None,
        "store": store,
    }
    for name in _ECHOED:
        body[name] = payload.get(name, _DEFAULTS.get(name))
    return body


def responses_usage(usage: Usage | None) -> Json | None:
    if usage is None:
        return None
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.total_tokens or usage.prompt_tokens + usage.completion_tokens,
    }


def usage_of(body: Json) -> Usage | None:
    """Our usage record from a Response object's `usage`."""
    raw = body.get("usage")
    if not isinstance(raw, dict):
        return None
    prompt, completion = int(raw.get("input_tokens") or 0), int(raw.get("output_tokens") or 0)
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=int(raw.get("total_tokens") or prompt + completion),
    )


def finished(body: Json, finish_reason: str | None, usage: Usage | None) -> Json:
    """The Response object once the model is done."""
    incomplete = finish_reason == "length"
    body["status"] = "incomplete" if incomplete else "completed"
    body["incomplete_details"] = {"reason": "max_output_tokens"} if incomplete else None
    body["usage"] = responses_usage(usage)
    if not incomplete:
        body["completed_at"] = int(time.time())
    return body


def message_item(item_id: str, text: str, status: str = "completed") -> Json:
    return {
        "type": "message",
        "id": item_id,
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def call_item(item_id: str, call_id: str, name: str, arguments: str, status: str = "completed") -> Json:
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def from_chat(chat: Json, payload: Json, rid: str, model: str, store: bool, usage: Usage | None) -> Json:
    """A whole chat completion as a Response object."""
    choice = (chat.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    body = skeleton(payload, rid, model, int(chat.get("created") or time.time()), store)
    suffix = rid.removeprefix("resp_")
    if message.get("content"):
        body["output"].append(message_item(f"msg_{suffix}", str(message["content"])))
    for i, call in enumerate(message.get("tool_calls") or ()):
        function = call.get("function") or {}
        call_id = call.get("id") or f"call_{suffix}_{i}"
        body["output"].append(
            call_item(f"fc_{suffix}_{i}", call_id, function.get("name", ""), function.get("arguments", ""))
        )
    return finished(body, choice.get("finish_reason"), usage)


def native_body(body: Json, payload: Json, rid: str, model: str, store: bool) -> Json:
    """A backend's own Response object, with our id and model and every field clients read."""
    out = skeleton(payload, rid, model, int(body.get("created_at") or time.time()), store)
    out.update({k: v for k, v in body.items() if k not in ("id", "model", "store", "object")})
    for index, item in enumerate(out.get("output") or ()):
        if isinstance(item, dict):
            item.setdefault("status", "completed")
            item.setdefault("id", f"item_{rid.removeprefix('resp_')}_{index}")
    if isinstance(out.get("usage"), dict):
        out["usage"] = responses_usage(usage_of(out))
    return out
