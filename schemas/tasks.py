"""Async tasks: any inference call, accepted now (202) and answered later (GET or webhook)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, field_validator

from schemas.endpoints import BY_TASK_NAME, EndpointSpec


class TaskStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


class WebhookState(StrEnum):
    PENDING = "pending"  # queued for delivery, no attempt yet
    RETRYING = "retrying"  # an attempt failed (`last_error`); another follows after a backoff
    DELIVERED = "delivered"  # the receiver answered 2xx
    DEAD_LETTERED = "dead_lettered"  # attempts used up, or the address is forbidden: no more tries


class WebhookDelivery(BaseModel):
    """Where the task's webhook stands, for its owner (`GET /v1/tasks/{id}`)."""

    state: WebhookState = WebhookState.PENDING
    attempts: int = 0
    last_error: str | None = None  # e.g. `timeout`, `HTTP 500`, `redirect refused (HTTP 307)`
    last_attempt_at: int | None = None  # epoch seconds
    delivered_at: int | None = None


class Webhook(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: HttpUrl


class TaskCreate(BaseModel):
    """Body of `POST /v1/tasks`: which endpoint, and the body that endpoint would take."""

    model_config = ConfigDict(extra="forbid")

    endpoint: str
    body: dict[str, Any]
    webhook: Webhook | None = None

    @field_validator("endpoint")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in BY_TASK_NAME:
            raise ValueError(f"must be one of {', '.join(BY_TASK_NAME)}")
        return value

    @property
    def spec(self) -> EndpointSpec:
        return BY_TASK_NAME[self.endpoint]


class TaskError(BaseModel):
    """Why a task failed, as the error body a synchronous call would have answered."""

    code: str
    message: str
    status: int
    param: str | None = None


class Task(BaseModel):
    """What `GET /v1/tasks/{id}` returns, and what the KV bucket and the tasks table hold."""

    id: str
    object: Literal["task"] = "task"
    status: TaskStatus
    endpoint: str
    model: str  # the model that serves it
    model_requested: str | None = None  # the name the caller used, when routing chose another
    consumer: str  # the owner; only the owner may read the task
    key_id: str | None = None
    created_at: int  # epoch seconds, as OpenAI objects do
    started_at: int | None = None
    completed_at: int | None = None
    worker: str | None = None
    result: dict[str, Any] | None = None
    error: TaskError | None = None
    webhook_url: str | None = None
    webhook: WebhookDelivery | None = None  # set once the task finished, when it has a webhook_url
    request_id: str
    deadline_ms: int
    request: dict[str, Any] | None = None  # the body as the model received it, for the audit record
    policy_actions: list[str] = Field(default_factory=list)  # what admission did, for the audit record
    batch_id: str | None = None  # set when the task is one line of a batch
    line: int | None = None
    custom_id: str | None = None

    def public(self) -> dict[str, Any]:
        """The API view: internal fields stay inside."""
        return self.model_dump(
            mode="json",
            exclude={"consumer", "key_id", "request", "deadline_ms", "policy_actions", "model_requested"},
        )
