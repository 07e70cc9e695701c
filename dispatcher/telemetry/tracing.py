"""Traces across the bus: the ingress starts a trace per request, the W3C `traceparent` travels in the
request envelope through JetStream, and the worker continues it.

Spans are recorded by the OpenTelemetry SDK and exported only when configured: OTLP over HTTP to a
collector (`MODELBUS_OTLP_ENDPOINT`), or JSON lines to a file (`MODELBUS_TRACE_FILE`, for tests and
debugging). With neither, spans carry only their ids (the trace id goes into the logs and the audit
record, the `traceparent` across the bus): `IdsOnlyTracerProvider` makes them without the SDK's
recording machinery, which cost 10-15 % of the ingress's and the worker's CPU per request for spans
nobody would ever read (docs/benchmarks.md, *CPU per request, round three*).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    TraceFlags,
    Tracer,
    use_span,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util._decorator import _agnosticcontextmanager
from opentelemetry.util.types import Attributes

_PROPAGATOR = TraceContextTextMapPropagator()
_exporting = False  # set by setup_tracing: does this process export its spans anywhere?


class JsonLinesExporter(SpanExporter):
    """One JSON object per finished span, appended to a file (several processes may share it)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = []
        for span in spans:
            context = span.get_span_context()
            assert context is not None
            lines.append(
                json.dumps(
                    {
                        "name": span.name,
                        "service": span.resource.attributes.get("service.name"),
                        "trace_id": f"{context.trace_id:032x}",
                        "span_id": f"{context.span_id:016x}",
                        "parent_id": f"{span.parent.span_id:016x}" if span.parent else None,
                        "kind": span.kind.name,
                        "start_ns": span.start_time,
                        "end_ns": span.end_time,
                        "attributes": {k: v for k, v in (span.attributes or {}).items()},
                    }
                )
            )
        with self._lock, open(self._path, "a", encoding="utf-8") as out:
            out.write("".join(line + "\n" for line in lines))
        return SpanExportResult.SUCCESS


class IdsOnlyTracer(Tracer):
    """Spans with ids and nothing else, for a process that exports no spans.

    The ids follow the SDK's rules with its default sampler (parent-based, always on): a span
    continues its parent's trace and sampling flag, or starts a sampled trace of its own, and gets a
    fresh random span id. So logs and audit records still name the trace, and a `traceparent` sent
    on to a worker that does export spans still asks it to record them.
    """

    def __init__(self) -> None:
        self._ids = RandomIdGenerator()

    def start_span(
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> Span:
        parent = trace.get_current_span(context).get_span_context()
        if parent.is_valid:
            own = SpanContext(
                parent.trace_id,
                self._ids.generate_span_id(),
                is_remote=False,
                trace_flags=parent.trace_flags,
                trace_state=parent.trace_state,
            )
        else:
            own = SpanContext(
                self._ids.generate_trace_id(),
                self._ids.generate_span_id(),
                is_remote=False,
                trace_flags=TraceFlags(TraceFlags.SAMPLED),
            )
        return NonRecordingSpan(own)

    @_agnosticcontextmanager
    def start_as_current_span(
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> Iterator[Span]:
        span = self.start_span(name, context)
        with use_span(span, end_on_exit=end_on_exit):
            yield span


class IdsOnlyTracerProvider(trace.TracerProvider):
    def __init__(self) -> None:
        self._tracer = IdsOnlyTracer()

    def get_tracer(self, *args: object, **kwargs: object) -> Tracer:
        return self._tracer


def exporting() -> bool:
    """Whether this process exports spans: if not, spans whose ids nobody reads (the worker's) need
    not be made at all."""
    return _exporting


def setup_tracing(service: str, otlp_endpoint: str | None = None, trace_file: Path | None = None) -> Tracer:
    global _exporting
    _exporting = bool(otlp_endpoint) or trace_file is not None
    if not _exporting:
        trace.set_tracer_provider(IdsOnlyTracerProvider())
        return trace.get_tracer("modelbus")
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint)))
    if trace_file is not None:
        provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(trace_file)))
    trace.set_tracer_provider(provider)
    return trace.get_tracer("modelbus")


def shutdown_tracing() -> None:
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.shutdown()


def traceparent_of(span: Span) -> str | None:
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, trace.set_span_in_context(span))
    return carrier.get("traceparent")


def context_from(traceparent: str | None) -> Context | None:
    """The remote parent a `traceparent` names (None if absent or malformed)."""
    if not traceparent:
        return None
    context = _PROPAGATOR.extract({"traceparent": traceparent})
    span_context: SpanContext = trace.get_current_span(context).get_span_context()
    return context if span_context.is_valid else None


def trace_id_of(span: Span) -> str:
    context = span.get_span_context()
    return f"{context.trace_id:032x}" if context.is_valid else ""
