"""What the ingress records when a request is done: metrics, the one-line JSON request log, and the
server span's end. Everything comes from the request's audit draft, which already holds the facts,
so the hot path pays for each fact once."""

from __future__ import annotations

import logging
import time
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from dispatcher.telemetry import metrics
from dispatcher.telemetry.labels import MetricLabels, sanitize

if TYPE_CHECKING:  # the audit middleware calls in here; no import cycle at run time
    from ingress.audit_events import AuditDraft

log = logging.getLogger("modelbus.request")

_INPUT_PREFIXES = ("pii.", "injection", "content:")


@lru_cache(maxsize=4096)
def _child(family: Any, *values: str) -> Any:
    """`family.labels(*values)`, looked up once: prometheus_client checks and locks on every call
    (5-10 µs each, a dozen per request). Label values are bounded by the configuration (labels.py)
    and no family's children are ever removed, so a cached child is the live one."""
    return family.labels(*values)


def record(draft: AuditDraft, status: int, trace_id: str, labels: MetricLabels) -> None:
    """`labels` of the revision in force: a model or consumer it does not name is counted as `unknown`
    (the log line keeps what the client sent)."""
    now_ms = time.time() * 1000
    envelope, final, start = draft.envelope, draft.final, draft.start
    model = labels.model(draft.model_requested)
    endpoint = sanitize(draft.endpoint)
    consumer = labels.consumer(draft.consumer)
    version = labels.version(start.version) if start else "-"
    _child(metrics.REQUESTS, model, version, consumer, endpoint, str(status)).inc()
    duration_s = (now_ms - draft.received_ms) / 1000
    _child(metrics.OPERATION_DURATION, endpoint, model, str(status)).observe(duration_s)
    usage = final.usage if final else None
    if usage is not None:
        _child(metrics.TOKEN_USAGE, "input", model).observe(usage.prompt_tokens)
        _child(metrics.TOKEN_USAGE, "output", model).observe(usage.completion_tokens)
        _child(metrics.TOKENS, model, consumer, "input").inc(usage.prompt_tokens)
        _child(metrics.TOKENS, model, consumer, "output").inc(usage.completion_tokens)
    timings = final.timings if final else None
    if timings is not None and draft.enqueued_ms is not None:
        phase = metrics.PHASE
        picked = timings.picked_up_ms
        _child(phase, "queue_wait", model).observe(max(0.0, picked - draft.enqueued_ms) / 1000)
        if timings.first_token_ms is not None:
            ttft = max(0.0, timings.first_token_ms - picked) / 1000
            _child(phase, "time_to_first_token", model).observe(ttft)
            _child(metrics.TIME_TO_FIRST_TOKEN, model).observe(ttft)
        _child(phase, "inference", model).observe(max(0.0, timings.finished_ms - picked) / 1000)
        _child(phase, "post_processing", model).observe(max(0.0, now_ms - timings.finished_ms) / 1000)
        own = (draft.enqueued_ms - draft.received_ms) + max(0.0, now_ms - timings.finished_ms)
        _child(phase, "gateway_overhead", model).observe(max(0.0, own) / 1000)
    for action in draft.policy_actions:
        _policy_metric(action, model)
    log.info(
        "%s %s %d",
        draft.endpoint,
        draft.model_requested or "-",
        status,
        extra={
            "request_id": draft.request_id,
            "trace_id": trace_id,
            "consumer": draft.consumer or "-",
            "key_id": draft.key_id,
            "model": draft.model_requested or "-",
            "served_by": envelope.target if envelope else None,
            "version": start.version if start else None,
            "worker": start.worker if start else None,
            "status": status,
            "duration_ms": round(now_ms - draft.received_ms, 1),
            "queue_ms": start.queue_ms if start else None,
            "prompt_tokens": usage.prompt_tokens if usage else None,
            "completion_tokens": usage.completion_tokens if usage else None,
            "policy": draft.policy_actions or None,
            "error": draft.error_code,
        },
    )


def _policy_metric(action: str, model: str) -> None:
    """`degraded:<how>[:...]`, `<detector>:<action>`, `output.pii.<kind>:<action>`."""
    if action.startswith("degraded:"):
        how = action.split(":")[1]
        metrics.DEGRADATIONS.labels(model, sanitize(how)).inc()
    elif action.startswith("output."):
        detector, _, taken = action.removeprefix("output.").rpartition(":")
        metrics.GUARDRAIL_ACTIONS.labels(sanitize(detector), sanitize(taken), "output").inc()
    elif action.startswith(_INPUT_PREFIXES):
        detector, _, taken = action.rpartition(":")
        metrics.GUARDRAIL_ACTIONS.labels(sanitize(detector), sanitize(taken), "input").inc()
