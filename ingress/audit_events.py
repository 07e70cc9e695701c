"""One audit event per inference request and per administrative action, whatever became of it,
emitted after the response is sent.

`AuditMiddleware` opens a draft for every inference call (`kind` sync) and every action that changes
something (`kind` admin: key create and revoke, file upload and delete, batch create and cancel);
authentication, admission, the relay, the routes and the error handlers fill it in as the request
goes; when the response (or the event stream) has been sent, the draft becomes an `AuditEvent` for
the audit stream. Keys and tokens never enter the draft: an action's row holds what it acted on
(`target`), never its response.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dispatcher.audit.chain import prompt_hash
from dispatcher.telemetry.labels import MetricLabels
from dispatcher.telemetry.tracing import context_from, trace_id_of
from ingress.deps import Services, services_of
from ingress.request_telemetry import record
from schemas.audit import AuditEvent, AuditStatus
from schemas.endpoints import ENDPOINTS
from schemas.envelope import FinalFrame, Pickup, RequestEnvelope

_TRACER = trace.get_tracer("modelbus.ingress")
_NO_LABELS = MetricLabels(frozenset(), frozenset(), frozenset())  # before start-up: all `unknown`
_INFERENCE = {spec.path: spec.audit_name for spec in ENDPOINTS.values()} | {"/v1/tasks": "tasks"}
_ACTIONS = (
    ("POST", re.compile(r"/admin/keys/?"), "keys.create"),
    ("DELETE", re.compile(r"/admin/keys/[^/]+"), "keys.revoke"),
    ("POST", re.compile(r"/v1/files/?"), "files.upload"),
    ("DELETE", re.compile(r"/v1/files/[^/]+"), "files.delete"),
    ("DELETE", re.compile(r"/v1/responses/[^/]+"), "responses.delete"),
    ("POST", re.compile(r"/v1/batches/?"), "batches.create"),
    ("POST", re.compile(r"/v1/batches/[^/]+/cancel"), "batches.cancel"),
)


def _audited(method: str, path: str) -> tuple[Literal["sync", "admin"], str] | None:
    if method == "POST" and path in _INFERENCE:
        return "sync", _INFERENCE[path]
    for verb, pattern, action in _ACTIONS:
        if method == verb and pattern.fullmatch(path):
            return "admin", action
    return None


@dataclass
class AuditDraft:
    request_id: str
    endpoint: str  # an inference endpoint, or an action such as `keys.revoke`
    received_ms: int
    kind: Literal["sync", "admin"] = "sync"
    target: dict[str, Any] | None = None  # what an action acted on (ids, never secrets)
    consumer: str | None = None
    key_id: str | None = None
    model_requested: str | None = None
    envelope: RequestEnvelope | None = None
    enqueued_ms: int | None = None
    start: Pickup | None = None
    final: FinalFrame | None = None
    body: bytes | None = None  # a non-streaming answer as delivered
    chunks: list[bytes] = field(default_factory=list)  # a streamed answer as delivered
    error_code: str | None = None
    error_message: str | None = None
    cancelled: bool = False
    deferred: bool = False  # an async task: its row is written when the task finishes
    policy_actions: list[str] = field(default_factory=list)  # e.g. route:<rule>, degraded:<how>
    trace_id: str | None = None


def draft_of(request: Request) -> AuditDraft | None:
    draft: AuditDraft | None = request.scope.get("state", {}).get("audit")
    return draft


def note_target(request: Request, **target: Any) -> None:
    """Record what an administrative action acts on, for its audit row."""
    draft = draft_of(request)
    if draft is not None:
        draft.target = {**(draft.target or {}), **target}


class AuditMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        audited = (
            _audited(scope.get("method", ""), scope.get("path", "")) if scope["type"] == "http" else None
        )
        if audited is None:
            await self.app(scope, receive, send)
            return
        kind, endpoint = audited
        draft = AuditDraft(uuid.uuid4().hex, endpoint, int(time.time() * 1000), kind)
        scope.setdefault("state", {})["audit"] = draft
        status = 500

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                # Every answer, errors included, names the request: it is the audit row's key.
                headers = list(message.get("headers", []))
                if not any(name == b"x-request-id" for name, _ in headers):
                    headers.append((b"x-request-id", draft.request_id.encode()))
                    message = {**message, "headers": headers}
                for name, value in headers:
                    # Degradations answered without a model run (cache, queued, failed) say so here.
                    if name == b"x-modelbus-degraded":
                        how = "degraded:" + value.decode("latin-1")
                        if not any(a.startswith("degraded:") for a in draft.policy_actions):
                            draft.policy_actions.append(how)
            await send(message)

        caller = _caller_context(scope)
        method = scope.get("method", "")
        with _TRACER.start_as_current_span(
            f"{method} {scope.get('path', '')}",
            context=caller,
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": method,
                "url.path": scope.get("path", ""),
                "modelbus.request_id": draft.request_id,
            },
        ) as span:
            draft.trace_id = trace_id_of(span) or None
            try:
                await self.app(scope, receive, capture)
            finally:
                span.set_attribute("http.response.status_code", status)
                if draft.model_requested:
                    span.set_attribute("gen_ai.request.model", draft.model_requested)
                services = services_of(scope)
                if services is not None and not (draft.deferred and status == 202):
                    services.audit.emit(build_event(draft, status))
                if kind == "sync":
                    _observe(draft, status, services)


def _observe(draft: AuditDraft, status: int, services: Services | None) -> None:
    """Request metrics, and this ingress's own traffic figures for its ops page."""
    labels = services.live.current.labels if services is not None else _NO_LABELS
    record(draft, status, draft.trace_id or "", labels)
    traffic = services.traffic if services is not None else None
    # Only configured models: a client's made-up names must not grow the ops page's figures.
    if traffic is not None and traffic.local and draft.model_requested in labels.models:
        final = draft.final
        tokens = final.usage.total_tokens if final and final.usage else 0
        latency = time.time() - draft.received_ms / 1000
        traffic.observe(draft.model_requested, latency, tokens, status < 400)


def _caller_context(scope: Scope) -> Context | None:
    for name, value in scope.get("headers", []):
        if name == b"traceparent":
            return context_from(value.decode("latin-1"))
    return None


def _output(draft: AuditDraft) -> Any:
    if draft.body is not None:
        body = orjson.loads(draft.body)
        if draft.endpoint == "embeddings":
            # Vectors are large and not what anyone asks of an audit trail; keep their shape.
            data = body.get("data") or []
            dims = len(data[0].get("embedding") or []) if data and isinstance(data[0], dict) else 0
            return {"embeddings": len(data), "dimensions": dims}
        return body
    if draft.chunks:
        parts: list[str] = []
        # One parse for all of them (each line is one JSON object): half the cost of one per line.
        for chunk in orjson.loads(b"[" + b",".join(draft.chunks) + b"]"):
            kind = chunk.get("type")
            if kind in ("response.completed", "response.incomplete"):
                return chunk.get("response")  # the whole Response, as a plain call would have it
            delta = chunk.get("delta")
            if kind == "response.output_text.delta" and isinstance(delta, str):
                parts.append(delta)
            elif kind == "content_block_delta" and isinstance(delta, dict):  # Anthropic
                parts.append(delta.get("text") or delta.get("partial_json") or "")
            for choice in chunk.get("choices") or ():
                delta = choice.get("delta") or {}
                parts.append(delta.get("content") or choice.get("text") or "")
        return {"text": "".join(parts), "chunks": len(draft.chunks)}
    return None


def _status(draft: AuditDraft, http_status: int) -> AuditStatus:
    if draft.cancelled or http_status == 499:
        return AuditStatus.CANCELLED
    if draft.envelope is None and http_status >= 400:
        return AuditStatus.REJECTED
    if http_status >= 400 or draft.error_code is not None:
        return AuditStatus.FAILED
    return AuditStatus.SERVED


def build_event(draft: AuditDraft, http_status: int) -> AuditEvent:
    envelope, final, start = draft.envelope, draft.final, draft.start
    usage = final.usage if final else None
    timings = final.timings if final else None
    return AuditEvent(
        event_id=draft.request_id,
        request_id=draft.request_id,
        kind=draft.kind,
        endpoint=draft.endpoint,
        status=_status(draft, http_status),
        http_status=http_status,
        error_code=draft.error_code,
        error_message=draft.error_message,
        consumer=draft.consumer,
        key_id=draft.key_id,
        model_requested=draft.model_requested,
        model_served=envelope.target if envelope else None,
        version=start.version if start else None,
        worker=start.worker if start else None,
        backend=start.backend if start else None,
        affinity=start.affinity if start else None,
        input=envelope.payload if envelope else draft.target,
        output=_output(draft),
        prompt_hash=prompt_hash(envelope.payload) if envelope else None,
        finish_reason=final.finish_reason if final else None,
        prompt_tokens=usage.prompt_tokens if usage else None,
        completion_tokens=usage.completion_tokens if usage else None,
        total_tokens=usage.total_tokens if usage else None,
        received_ms=draft.received_ms,
        enqueued_ms=draft.enqueued_ms,
        picked_up_ms=timings.picked_up_ms if timings else None,
        first_token_ms=timings.first_token_ms if timings else None,
        finished_ms=int(time.time() * 1000),
        policy_actions=draft.policy_actions,
        trace_id=draft.trace_id or _trace_id(envelope.traceparent if envelope else None),
    )


def _trace_id(traceparent: str | None) -> str | None:
    parts = (traceparent or "").split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None
