"""Spans of a process that exports none (IdsOnlyTracer): ids only, by the SDK's sampling rules."""

from __future__ import annotations

from opentelemetry import trace

from dispatcher.telemetry.tracing import IdsOnlyTracer, context_from, trace_id_of, traceparent_of


def test_a_root_span_starts_a_sampled_trace_and_children_continue_it() -> None:
    tracer = IdsOnlyTracer()
    with tracer.start_as_current_span("server") as root:
        child = tracer.start_span("enqueue")
    root_context, child_context = root.get_span_context(), child.get_span_context()
    assert root_context.is_valid and root_context.trace_flags.sampled
    assert trace_id_of(root) == f"{root_context.trace_id:032x}"
    assert child_context.trace_id == root_context.trace_id
    assert child_context.span_id != root_context.span_id
    assert child_context.trace_flags.sampled
    assert trace.get_current_span() is not root  # the context is restored on exit
    # Two requests are two traces.
    with tracer.start_as_current_span("server") as other:
        assert other.get_span_context().trace_id != root_context.trace_id


def test_a_remote_parent_gives_its_trace_and_its_sampling_flag() -> None:
    tracer = IdsOnlyTracer()
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    for flags, sampled in (("01", True), ("00", False)):
        parent = context_from(f"00-{trace_id}-b7ad6b7169203331-{flags}")
        with tracer.start_as_current_span("process", context=parent) as span:
            sent = traceparent_of(span)
        assert sent is not None
        _version, sent_trace, sent_span, sent_flags = sent.split("-")
        assert (sent_trace, sent_flags) == (trace_id, flags)
        assert sent_span != "b7ad6b7169203331"
        assert span.get_span_context().trace_flags.sampled is sampled
