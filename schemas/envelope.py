"""The bus envelope: what an ingress publishes for a request and the frames a worker sends back.

A reply frame travels as one NATS message whose body is a JSON *meta* line, a newline, and an
optional opaque payload (OpenAI chunk objects, one per line, or a whole response). Keeping the
payload opaque lets the ingress relay tokens without parsing them.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.openai import Usage
from schemas.policy import PII_KINDS, GuardAction, PiiKind


class Endpoint(StrEnum):
    CHAT = "chat"
    COMPLETIONS = "completions"
    EMBEDDINGS = "embeddings"
    RESPONSES = "responses"  # OpenAI's Responses API
    MESSAGES = "messages"  # Anthropic's Messages API
    RERANK = "rerank"
    SCORE = "score"  # vLLM's sentence-pair scores (cross-encoders, embedding models)
    TOKENIZE = "tokenize"
    DETOKENIZE = "detokenize"


# Served by any chat model: translated to and from chat completions unless the backend has them.
CHAT_DIALECTS = (Endpoint.RESPONSES, Endpoint.MESSAGES)


class Lane(StrEnum):
    """Priority lanes; each is its own subject and consumer so workers can drain them in order."""

    INTERACTIVE = "interactive"
    BATCH = "batch"


class QuotaReservation(BaseModel):
    """Tokens taken from a consumer's budgets at admission; the worker settles them with real usage."""

    model_config = ConfigDict(extra="forbid")

    counters: list[str]  # quota counter subjects the tokens were added to
    tokens: int


class OutputGuardrails(BaseModel):
    """What the worker must do to the answer before it leaves (resolved by the ingress)."""

    model_config = ConfigDict(extra="forbid")

    pii: GuardAction = "off"
    pii_kinds: list[PiiKind] = Field(default_factory=lambda: list(PII_KINDS))
    sanitize: bool = False
    phone_regions: list[str] | None = None  # None: the default regions


class RequestEnvelope(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=128)
    endpoint: Endpoint
    model: str  # the name the client asked for
    target: str  # the deployment that must serve it (after routing)
    version: str = "default"
    lane: Lane = Lane.INTERACTIVE
    consumer: str
    key_id: str | None = None
    stream: bool = False
    created_ms: int  # epoch milliseconds when the ingress accepted the request
    deadline_ms: int  # epoch milliseconds after which nobody waits for the answer
    reply_to: str  # subject that only the waiting ingress reads
    # The waiting side reads batched liveness (one pulse per worker and tick for all its requests,
    # on Subjects.pulse_for(reply_to)) instead of a heartbeat frame per request. False: the sender
    # predates pulses, or the replies go to a stream (async tasks), where nobody waits on liveness.
    pulse: bool = False
    # The waiting side reads stream chunks from the final frame's payload too (`FinalFrame.count`):
    # chunks still unsent when the backend's stream ends leave with the final frame, one message
    # fewer per stream. False: the sender predates it, or it reads only the final frame's body.
    chunks_in_final: bool = False
    traceparent: str | None = None
    # No defaults: whoever builds an envelope must say what admission decided, even if it is None.
    quota: QuotaReservation | None
    output_guard: OutputGuardrails | None
    payload: dict[str, Any]


class ErrorCode(StrEnum):
    BACKEND_UNAVAILABLE = "backend_unavailable"
    BACKEND_ERROR = "backend_error"
    INVALID_REQUEST = "invalid_request"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    CANCELLED = "cancelled"
    WORKER_LOST = "worker_lost"
    STREAM_BROKEN = "stream_broken"
    DEAD_LETTERED = "dead_lettered"


class _Frame(BaseModel):
    model_config = ConfigDict(extra="ignore")

    attempt: int = 1  # JetStream delivery count of the request this frame answers
    seq: int = 0  # per attempt: the first frame sent (a start, else a chunk or final) is 0


Affinity = Literal["home", "stolen"]


class Pickup(BaseModel):
    """Who picked a request up, and how long it waited in the queue first."""

    worker: str
    backend: str
    version: str = "default"
    queue_ms: int
    affinity: Affinity | None = None  # models with prefix affinity: the bucket was the worker's own


class StartFrame(_Frame, Pickup):
    """Sent when a worker picks a request up, where someone can use it at once: a task's `running`
    status at once, a stream's first SSE comment and headers when its first token is slow to come.
    A plain request's answer carries the same facts in its final frame instead (`FinalFrame.pickup`),
    a quick stream's in its first chunk frame (`ChunkFrame.pickup`): one message fewer each."""

    kind: Literal["start"] = "start"


class ChunkFrame(_Frame):
    """Carries `count` OpenAI stream chunks, one JSON object per payload line."""

    kind: Literal["chunk"] = "chunk"
    count: int
    # Set on a stream's first chunk frame when its first token came quickly enough that no start
    # frame was sent: one message fewer per stream (an older ingress ignores the field).
    pickup: Pickup | None = None


class Timings(BaseModel):
    received_ms: int
    picked_up_ms: int
    first_token_ms: int | None = None
    finished_ms: int


class FinalFrame(_Frame):
    """Ends a reply. For a non-streaming request the payload is the whole response body; for a
    stream whose envelope has `chunks_in_final`, the last `count` chunks, as in a chunk frame."""

    kind: Literal["final"] = "final"
    count: int | None = None
    usage: Usage | None = None
    finish_reason: str | None = None
    timings: Timings
    guard_events: list[str] = Field(default_factory=list)  # output guardrail findings, "<kind>:<action>"
    pickup: Pickup | None = None  # set when no start frame was sent for this attempt


class ErrorFrame(_Frame):
    kind: Literal["error"] = "error"
    code: ErrorCode
    message: str
    status: int = 502
    retryable: bool = False
    # What the client sees as the error's `code` when the backend said more than `code` does, e.g.
    # OpenAI's `context_length_exceeded` for a prompt longer than the model's context.
    api_code: str | None = None
    param: str | None = None

    @property
    def client_code(self) -> str:
        return self.api_code or self.code.value


class HeartbeatFrame(_Frame):
    """Liveness while a backend is silent (long prefill); carries no data and no sequence."""

    kind: Literal["heartbeat"] = "heartbeat"


ReplyFrame = Annotated[
    StartFrame | ChunkFrame | FinalFrame | ErrorFrame | HeartbeatFrame, Field(discriminator="kind")
]
