"""The one table of inference endpoints: everything the gateway knows per endpoint, in one row.

Routes, admission (schema and RBAC operation), async tasks, batch lines, worker backends and the
audit trail all look an endpoint up here; adding an endpoint is adding a row.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from schemas.envelope import Endpoint
from schemas.openai import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from schemas.policy import Operation


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    endpoint: Endpoint  # the bus name, carried in every envelope
    path: str  # the HTTP route, also the `url` of a batch line
    task_name: str  # the `endpoint` of `POST /v1/tasks` and of a task record
    schema: type[BaseModel]  # validates the request body
    operation: Operation  # what a role must grant for a direct call
    backend_path: str  # relative to an OpenAI-compatible backend's /v1/
    streams: bool  # whether `stream: true` is meaningful
    audit_name: str  # the audit row's `endpoint`


ENDPOINTS: dict[Endpoint, EndpointSpec] = {
    spec.endpoint: spec
    for spec in (
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
    )
}
BY_PATH: dict[str, EndpointSpec] = {spec.path: spec for spec in ENDPOINTS.values()}
BY_TASK_NAME: dict[str, EndpointSpec] = {spec.task_name: spec for spec in ENDPOINTS.values()}
