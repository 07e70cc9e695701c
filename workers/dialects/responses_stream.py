"""Responses API streams: typed events (`response.created`, `response.output_text.delta`, ...,
`response.completed`), from a chat completion stream or from a backend that streams them itself.

Both hold the terminal event back until `finish()`: the runner stores the response first, so a
client that continues it the moment it sees `response.completed` finds it stored.
"""

from __future__ import annotations

import time
from typing import Any

from schemas.openai import Usage
from workers.dialects.responses import call_item, finished, message_item, native_body, skeleton, usage_of

Json = dict[str, Any]
_TERMINAL = ("response.completed", "response.incomplete", "response.failed")


class _Events:
    def __init__(self) -> None:
        self._seq = 0
        self.response: Json | None = None  # the whole Response once known
        self.usage: Usage | None = None

    def _event(self, kind: str, **fields: Any) -> Json:
        event = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return event


class ResponsesFromChat(_Events):
    """Chat completion chunks in, Responses events out."""

    def __init__(self, payload: Json, rid: str, model: str, store: bool) -> None:
        super().__init__()
        self._body = skeleton(payload, rid, model, int(time.time()), store)
        self._suffix = rid.removeprefix("resp_")
        self._text: Json | None = None  # the open message item
        self._text_index = 0
        self._calls: dict[int, tuple[int, Json]] = {}  # chat tool-call index -> (output index, item)
        self._started = False

    def chunk(self, chunk: Json) -> list[Json]:
        events = self._start()
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue  # the Responses API has one output sequence
            delta = choice.get("delta") or {}
            if delta.get("content"):
                events += self._text_delta(str(delta["content"]))
            for call in delta.get("tool_calls") or ():
                events += self._call_delta(call)
        return events

    def finish(self, usage: Usage | None, finish_reason: str | None) -> list[Json]:
        events = self._start() + self._close_text()
        for index, item in self._calls.values():
            item["status"] = "completed"
            events.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=index,
                    arguments=item["arguments"],
                )
            )
            events.append(self._event("response.output_item.done", output_index=index, item=item))
        self.usage = usage
        self.response = finished(self._body, finish_reason, usage)
        kind = "response.incomplete" if self.response["status"] == "incomplete" else "response.completed"
        return [*events, self._event(kind, response=self.response)]

    def _start(self) -> list[Json]:
        if self._started:
            return []
        self._started = True
        # Copies as they are now: the output list fills before these events are serialized.
        return [
            self._event("response.created", response={**self._body, "output": []}),
            self._event("response.in_progress", response={**self._body, "output": []}),
        ]

    def _text_delta(self, text: str) -> list[Json]:
        events: list[Json] = []
        if self._text is None:
            self._text = message_item(f"msg_{self._suffix}", "", "in_progress")
            self._text_index = len(self._body["output"])
            self._body["output"].append(self._text)
            added = {**self._text, "content": []}
            events.append(
                self._event("response.output_item.added", output_index=self._text_index, item=added)
            )
            events.append(
                self._event(
                    "response.content_part.added",
                    item_id=self._text["id"],
                    output_index=self._text_index,
                    content_index=0,
                    part={"type": "output_text", "text": "", "annotations": []},
                )
            )
        self._text["content"][0]["text"] += text
        events.append(
            self._event(
                "response.output_text.delta",
                item_id=self._text["id"],
                output_index=self._text_index,
                content_index=0,
                delta=text,
                logprobs=[],
            )
        )
        return events

    def _close_text(self) -> list[Json]:
        item = self._text
        if item is None or item["status"] == "completed":
            return []
        item["status"] = "completed"
        part = item["content"][0]
        at = {"item_id": item["id"], "output_index": self._text_index, "content_index": 0}
        return [
            self._event("response.output_text.done", **at, text=part["text"], logprobs=[]),
            self._event("response.content_part.done", **at, part=part),
            self._event("response.output_item.done", output_index=self._text_index, item=item),
        ]

    def _call_delta(self, call: Json) -> list[Json]:
        events: list[Json] = []
        position = int(call.get("index", 0))
        function = call.get("function") or {}
        if position not in self._calls:
            events += self._close_text()  # text comes before the calls in one assistant turn
            number = len(self._calls)
            call_id = call.get("id") or f"call_{self._suffix}_{number}"
            item = call_item(
                f"fc_{self._suffix}_{number}", call_id, function.get("name") or "", "", "in_progress"
            )
            index = len(self._body["output"])
            self._body["output"].append(item)
            self._calls[position] = (index, item)
            events.append(self._event("response.output_item.added", output_index=index, item=dict(item)))
        index, item = self._calls[position]
        if function.get("name") and not item["name"]:
            item["name"] = function["name"]
        if function.get("arguments"):
            item["arguments"] += function["arguments"]
            events.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=item["id"],
                    output_index=index,
                    delta=function["arguments"],
                )
            )
        return events


class NativeResponses(_Events):
    """A backend's own Responses events, with our ids, sequence numbers and the indexes clients
    use to assemble them (some servers leave `output_index` and `content_index` out)."""

    def __init__(self, payload: Json, rid: str, model: str, store: bool) -> None:
        super().__init__()
        self._payload, self._rid, self._model, self._store = payload, rid, model, store
        self._indexes: dict[str, int] = {}  # item id -> output index
        self._held: list[Json] = []

    def chunk(self, event: Json) -> list[Json]:
        event = dict(event)
        event.pop("timings", None)  # llama.cpp's own statistics
        kind = str(event.get("type", ""))
        if isinstance(event.get("response"), dict):
            event["response"] = native_body(
                event["response"], self._payload, self._rid, self._model, self._store
            )
        item = event.get("item")
        if kind == "response.output_item.added" and isinstance(item, dict):
            self._indexes.setdefault(str(item.get("id")), len(self._indexes))
        if "item_id" in event or isinstance(item, dict):
            item_id = str(event.get("item_id") or (item or {}).get("id"))
            event.setdefault("output_index", self._indexes.get(item_id, 0))
        if "part" in event or kind.startswith("response.output_text."):
            event.setdefault("content_index", 0)
        if kind in _TERMINAL:
            self.response = event.get("response")
            self.usage = usage_of(self.response or {})
            self._held.append(event)
            return []
        event["sequence_number"] = self._seq
        self._seq += 1
        return [event]

    def finish(self, usage: Usage | None, finish_reason: str | None) -> list[Json]:
        for event in self._held:
            event["sequence_number"] = self._seq
            self._seq += 1
        return self._held
