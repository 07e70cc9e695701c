"""OpenAI Files and Batch API objects."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.endpoints import BY_PATH

# How long a batch may take (OpenAI's only completion window); lines not run by then fail.
COMPLETION_WINDOW_S = 24 * 3600


def _known_path(value: str) -> str:
    if value not in BY_PATH:
        raise ValueError(f"must be one of {', '.join(BY_PATH)}")
    return value


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"] = "processed"


class BatchLine(BaseModel):
    """One line of a batch input file."""

    model_config = ConfigDict(extra="ignore")

    custom_id: str = Field(min_length=1, max_length=512)
    method: Literal["POST"]
    url: str
    body: dict[str, Any]

    _url = field_validator("url")(_known_path)


class BatchCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input_file_id: str
    endpoint: str
    completion_window: Literal["24h"] = "24h"
    metadata: dict[str, str] | None = None

    _endpoint = field_validator("endpoint")(_known_path)


class IdentitySnapshot(BaseModel):
    """The identity a batch was created under; its lines run as it (re-derived when they run)."""

    model_config = ConfigDict(extra="forbid")

    consumer: str
    key_id: str
    credential_roles: list[str] = Field(default_factory=list)  # roles from a JWT's claims
    settings_consumer: str | None = None  # the consumer entry whose limits and guardrails apply


class QueuedLine(BaseModel):
    """One batch line on its way to admission (the batch-line stream's message)."""

    model_config = ConfigDict(extra="forbid")

    batch_id: str
    index: int
    custom_id: str
    url: str
    body: dict[str, Any]
    identity: IdentitySnapshot
    traceparent: str | None = None
    deadline_ms: int


class RequestCounts(BaseModel):
    total: int
    completed: int
    failed: int


class Batch(BaseModel):
    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    errors: dict[str, Any] | None = None
    input_file_id: str
    completion_window: str
    status: Literal[
        "validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled"
    ]
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts
    metadata: dict[str, str] | None = None
