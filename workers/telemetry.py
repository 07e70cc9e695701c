"""The worker's part of a request's trace and its metrics.

The trace continues from the `traceparent` the ingress put in the envelope: a consumer span for the
whole processing, with children for the time the request spent queued (from the ingress's enqueue to
pick-up, recorded after the fact with explicit times), the inference (the backend call; time to
first token as an attribute and an event), the generation (first token to last) and post-processing
(normalization and output guardrails).

Nothing reads the worker's span ids (its logs do not carry them, its backend calls send no
`traceparent`), so a worker that exports no spans makes none (`exporting()`): the spans cost about a
tenth of its CPU per request (docs/benchmarks.md, *CPU per request, round three*).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind

from dispatcher.telemetry.tracing import context_from, exporting
from schemas.envelope import RequestEnvelope, Timings

_TRACER = trace.get_tracer("modelbus.worker")
_MS = 1_000_000  # nanoseconds per millisecond


@contextmanager
def processing(envelope: RequestEnvelope, picked_up_ms: int, worker: str) -> Iterator[Span]:
    if not exporting():
        yield INVALID_SPAN
        return
    tracer = _TRACER
    parent = context_from(envelope.traceparent)
    with tracer.start_as_current_span(
        f"process {envelope.target}",
        context=parent,
        kind=SpanKind.CONSUMER,
        attributes={
            "messaging.system": "nats",
            "messaging.operation.type": "process",
            "gen_ai.request.model": envelope.target,
            "gen_ai.operation.name": envelope.endpoint.value,
            "modelbus.request_id": envelope.id,
            "modelbus.version": envelope.version,
            "modelbus.worker": worker,
        },
    ) as span:
        queued = tracer.start_span("queue wait", start_time=envelope.created_ms * _MS)
        queued.end(end_time=picked_up_ms * _MS)
        yield span


def record_inference(timings: Timings) -> None:
    """Spans for inference and generation, from the timings the runner measured."""
    if not timings.finished_ms or not exporting():
        return
    tracer = _TRACER
    inference = tracer.start_span("inference", start_time=timings.picked_up_ms * _MS)
    if timings.first_token_ms is not None:
        ttft_ms = timings.first_token_ms - timings.picked_up_ms
        inference.set_attribute("gen_ai.server.time_to_first_token", ttft_ms / 1000)
        inference.add_event("first token", timestamp=timings.first_token_ms * _MS)
        generation = tracer.start_span(
            "generation",
            context=trace.set_span_in_context(inference),
            start_time=timings.first_token_ms * _MS,
        )
        generation.end(end_time=timings.finished_ms * _MS)
    inference.end(end_time=timings.finished_ms * _MS)


def record_post_processing(spent_ns: int, finished_ms: int) -> None:
    """A stream's post-processing happens chunk by chunk; one span carries its total, at the end."""
    if not exporting():
        return
    end = finished_ms * _MS
    span = _TRACER.start_span("post-processing", start_time=end - spent_ns)
    span.set_attribute("modelbus.streamed", True)
    span.end(end_time=end)


@contextmanager
def post_processing() -> Iterator[None]:
    if not exporting():
        yield
        return
    with _TRACER.start_as_current_span("post-processing"):
        yield
