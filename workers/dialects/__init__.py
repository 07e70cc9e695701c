"""The APIs a worker answers beside chat completions, on backends that may not serve them.

`plan()` decides, per request, what the backend is asked and how its answer reaches the client:
- chat, completions, embeddings, rerank, tokenize: the backend's own endpoint, the answer as it is;
- Responses and Messages: the backend's own endpoint when it serves it (its answers get our ids and
  every field clients read), otherwise chat completions, translated both ways. Output guardrails
  read chat completions, so a request with output guardrails is always translated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from schemas.dialects import StoredResponse, input_items
from schemas.envelope import Endpoint, RequestEnvelope
from schemas.openai import Usage
from workers.dialects import messages, responses
from workers.dialects.responses_stream import NativeResponses, ResponsesFromChat

Json = dict[str, Any]


class Presenter(Protocol):
    """From the backend's answer to the client's API."""

    usage: Usage | None  # usage read from the answer itself (Responses and Messages shapes)
    response: Json | None  # a whole Responses object to store, once known

    def chunk(self, chunk: Json) -> list[Json]:
        """The events one backend stream chunk becomes (possibly none, possibly several)."""
        ...

    def finish(self, usage: Usage | None, finish_reason: str | None) -> list[Json]:
        """The closing events, once the backend stream has ended."""
        ...


class Passthrough:
    usage: Usage | None = None
    response: Json | None = None

    def chunk(self, chunk: Json) -> list[Json]:
        return [chunk]

    def finish(self, usage: Usage | None, finish_reason: str | None) -> list[Json]:
        return []


@dataclass
class Plan:
    endpoint: Endpoint  # what the backend is asked
    payload: Json  # what it is sent
    translated: bool  # a Responses or Messages request answered by chat completions
    envelope: RequestEnvelope

    @property
    def stores(self) -> bool:
        """A Responses answer the caller asked to keep (`store`, true unless it says otherwise)."""
        return (
            self.envelope.endpoint is Endpoint.RESPONSES and self.envelope.payload.get("store") is not False
        )

    def presenter(self) -> Presenter:
        envelope = self.envelope
        if envelope.endpoint is Endpoint.RESPONSES:
            kind = ResponsesFromChat if self.translated else NativeResponses
            rid = responses.response_id(envelope.id)
            return kind(envelope.payload, rid, envelope.target, self.stores)
        if envelope.endpoint is Endpoint.MESSAGES:
            mid = messages.message_id(envelope.id)
            return (
                messages.MessagesFromChat(mid, envelope.target)
                if self.translated
                else messages.NativeMessages(mid, envelope.target)
            )
        return Passthrough()

    def body(self, body: Json, usage: Usage | None) -> tuple[Json, Usage | None]:
        """A whole answer in the client's API, and its usage."""
        envelope = self.envelope
        if envelope.endpoint is Endpoint.RESPONSES:
            rid = responses.response_id(envelope.id)
            if self.translated:
                return responses.from_chat(
                    body, envelope.payload, rid, envelope.target, self.stores, usage
                ), usage
            out = responses.native_body(body, envelope.payload, rid, envelope.target, self.stores)
            return out, responses.usage_of(out)
        if envelope.endpoint is Endpoint.MESSAGES:
            mid = messages.message_id(envelope.id)
            if self.translated:
                return messages.from_chat(body, mid, envelope.target, usage), usage
            return messages.native_body(body, mid, envelope.target), messages.usage_of(body.get("usage"))
        return body, usage


def plan(envelope: RequestEnvelope, native: frozenset[Endpoint]) -> Plan:
    endpoint, payload = envelope.endpoint, envelope.payload
    if endpoint not in (Endpoint.RESPONSES, Endpoint.MESSAGES):
        return Plan(endpoint, payload, False, envelope)
    if endpoint in native and envelope.output_guard is None:
        sent = responses.native_request(payload) if endpoint is Endpoint.RESPONSES else payload
        return Plan(endpoint, sent, False, envelope)
    chat = responses.to_chat(payload) if endpoint is Endpoint.RESPONSES else messages.to_chat(payload)
    return Plan(Endpoint.CHAT, chat, True, envelope)


def stored(envelope: RequestEnvelope, response: Json) -> StoredResponse:
    """What is kept of a Responses answer: its conversation so far (the input the model read, earlier
    turns included, as admission expanded it) and the answer."""
    return StoredResponse(
        id=str(response["id"]),
        consumer=envelope.consumer,
        created_at=int(response.get("created_at") or envelope.created_ms // 1000),
        context=input_items(envelope.payload["input"]),
        response=response,
    )
