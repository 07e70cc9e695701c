"""The one table of inference endpoints: everything the gateway knows per endpoint, in one row.

Routes, admission (schema and RBAC operation), async tasks, batch lines, worker backends, the SSE
framing, the error shape and the audit trail all look an endpoint up here; adding an endpoint is
adding a row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

from schemas.dialects import (
    DetokenizeRequest,
    MessagesRequest,
    RerankRequest,
    ResponsesRequest,
    ScoreRequest,
    TokenizeRequest,
)
from schemas.envelope import Endpoint
from schemas.openai import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from schemas.policy import Operation

ErrorStyle = Literal["openai", "anthropic"]


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    endpoint: Endpoint  # the bus name, carried in every envelope
    path: str  # the HTTP route, also the `url` of a batch line
    task_name: str  # the `endpoint` of `POST /v1/tasks` and of a task record
    schema: type[BaseModel]  # validates the request body
    operation: Operation  # what a role must grant for a direct call
    # Relative to an OpenAI-compatible backend's base URL (its `/v1/`); a leading `/` means the
    # server's root, where llama.cpp and vLLM serve their tokenizer.
    backend_path: str
    streams: bool  # whether `stream: true` is meaningful
    audit_name: str  # the audit row's `endpoint`
    # Stream framing: False, `data:` lines ending with `data: [DONE]` (chat, completions); True,
    # `event: <type>` before each `data:` line and no [DONE] (Responses, Anthropic Messages).
    named_events: bool = False
    errors: ErrorStyle = "openai"  # the shape of error bodies the endpoint's clients parse


_ROWS = (
    EndpointSpec(
        Endpoint.CHAT,
        "/v1/chat/completions",
        "chat.completions",
        ChatCompletionRequest,
        "chat",
        "chat/completions",
        True,
        "chat",
    ),
    EndpointSpec(
        Endpoint.COMPLETIONS,
        "/v1/completions",
        "completions",
        CompletionRequest,
        "completions",
        "completions",
        True,
        "completions",
    ),
    EndpointSpec(
        Endpoint.EMBEDDINGS,
        "/v1/embeddings",
        "embeddings",
        EmbeddingRequest,
        "embeddings",
        "embeddings",
        False,
        "embeddings",
    ),
    EndpointSpec(
        Endpoint.RESPONSES,
        "/v1/responses",
        "responses",
        ResponsesRequest,
        "chat",
        "responses",
        True,
        "responses",
        named_events=True,
    ),
    EndpointSpec(
        Endpoint.MESSAGES,
        "/v1/messages",
        "messages",
        MessagesRequest,
        "chat",
        "messages",
        True,
        "messages",
        named_events=True,
        errors="anthropic",
    ),
    EndpointSpec(Endpoint.RERANK, "/v1/rerank", "rerank", RerankRequest, "rerank", "rerank", False, "rerank"),
    EndpointSpec(Endpoint.SCORE, "/v1/score", "score", ScoreRequest, "rerank", "score", False, "score"),
    EndpointSpec(
        Endpoint.TOKENIZE,
        "/tokenize",
        "tokenize",
        TokenizeRequest,
        "tokenize",
        "/tokenize",
        False,
        "tokenize",
    ),
    EndpointSpec(
        Endpoint.DETOKENIZE,
        "/detokenize",
        "detokenize",
        DetokenizeRequest,
        "tokenize",
        "/detokenize",
        False,
        "detokenize",
    ),
)
ENDPOINTS: dict[Endpoint, EndpointSpec] = {spec.endpoint: spec for spec in _ROWS}
BY_PATH: dict[str, EndpointSpec] = {spec.path: spec for spec in ENDPOINTS.values()}
BY_TASK_NAME: dict[str, EndpointSpec] = {spec.task_name: spec for spec in ENDPOINTS.values()}
