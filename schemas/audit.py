"""Audit records: one per request, whatever became of it. Never holds an API key or bearer token."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class AuditStatus(StrEnum):
    SERVED = "served"  # answered by a model
    FAILED = "failed"  # accepted, but no answer (backend error, deadline, lost worker)
    REJECTED = "rejected"  # refused before reaching the bus (auth, validation, quota, policy)
    CANCELLED = "cancelled"  # the client went away


class AuditEvent(BaseModel):
    """What the ingress (sync calls) or the task collector (async, batch) publishes for the sink."""

    model_config = ConfigDict(extra="forbid")

    event_id: str = Field(min_length=1, max_length=128, description="one row per event id")
    request_id: str
    kind: Literal["sync", "async", "batch", "admin"] = "sync"
    endpoint: str  # an inference endpoint, or for `admin` the action (`keys.revoke`, `config.apply`)
    status: AuditStatus
    http_status: int
    error_code: str | None = None
    error_message: str | None = None
    consumer: str | None = None
    key_id: str | None = None  # the key's public id, never the key
    model_requested: str | None = None
    model_served: str | None = None
    version: str | None = None
    worker: str | None = None
    backend: str | None = None
    affinity: str | None = None  # prefix affinity: `home` or `stolen` (models with `affinity`)
    input: dict[str, Any] | None = None  # the payload as sent to the model (after masking); for
    # an admin action, what it acted on
    output: Any = None  # the answer as delivered: response body, or the streamed text
    prompt_hash: str | None = None  # sha256 of the canonical prompt, to compare versions
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    received_ms: int
    enqueued_ms: int | None = None
    picked_up_ms: int | None = None
    first_token_ms: int | None = None
    finished_ms: int | None = None
    policy_actions: list[str] = Field(default_factory=list)
    trace_id: str | None = None


class AuditCheckpoint(BaseModel):
    """A signed statement that the chain reached `seq` with `row_hash` at `at_ms` (kept in NATS KV)."""

    model_config = ConfigDict(extra="forbid")

    seq: int
    row_hash: str
    at_ms: int
    signature: str  # base64 Ed25519 over "modelbus-audit-head\n<seq>\n<row_hash>\n<at_ms>"
