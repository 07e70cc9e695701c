"""What tracing, metrics and the request log add per request, on the ingress and on the worker.

    python bench/telemetry_overhead.py [--requests 20000] [--otlp]

Runs the exact hooks the gateway runs per request — the ingress's server, auth, policy and enqueue
spans with traceparent injection, `ingress.request_telemetry.record` (every metric family plus the JSON log
line, written to a real file), and the worker's process, queue-wait, inference, generation and
post-processing spans plus its counter — with an SDK tracer provider, once with no exporter (the
default) and, with --otlp, with the batching OTLP/HTTP exporter sending to a local receiver (export
runs on its own thread; this shows what remains on the request path). All of it is CPU work on the request's own path,
so the sum is the growth of gateway-added latency.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from opentelemetry import trace
from opentelemetry.trace import SpanKind

from bench.stats import percentile
from dispatcher.telemetry import metrics
from dispatcher.telemetry.labels import MetricLabels
from dispatcher.telemetry.logs import JsonFormatter
from dispatcher.telemetry.tracing import context_from, setup_tracing, trace_id_of, traceparent_of
from ingress.audit_events import AuditDraft
from ingress.request_telemetry import record
from schemas.envelope import Endpoint, FinalFrame, RequestEnvelope, StartFrame, Timings
from schemas.openai import Usage
from workers.telemetry import post_processing, processing, record_inference

# The configured names, so the bench pays for the label lookups a real ingress does.
_LABELS = MetricLabels(frozenset({"llama"}), frozenset({"default"}), frozenset({"team-a"}))


def _draft(now_ms: int) -> AuditDraft:
    draft = AuditDraft("r" * 32, "chat", now_ms - 12, consumer="team-a", key_id="k1", model_requested="llama")
    draft.enqueued_ms = now_ms - 11
    draft.start = StartFrame(worker="w1", backend="sim", version="default", queue_ms=1)
    draft.final = FinalFrame(
        usage=Usage(prompt_tokens=120, completion_tokens=40, total_tokens=160),
        finish_reason="stop",
        timings=Timings(
            received_ms=now_ms - 11,
            picked_up_ms=now_ms - 10,
            first_token_ms=now_ms - 8,
            finished_ms=now_ms - 1,
        ),
    )
    draft.policy_actions = ["pii.email:mask"]
    return draft


def ingress_hooks(tracer: trace.Tracer) -> str | None:
    now_ms = int(time.time() * 1000)
    draft = _draft(now_ms)
    with tracer.start_as_current_span("POST /v1/chat/completions", kind=SpanKind.SERVER) as server:
        draft.trace_id = trace_id_of(server)
        with tracer.start_as_current_span("auth"):
            pass
        with tracer.start_as_current_span("policy"):
            pass
        with tracer.start_as_current_span(
            "enqueue", kind=SpanKind.PRODUCER, attributes={"messaging.system": "nats"}
        ) as span:
            parent = traceparent_of(span)
        record(draft, 200, draft.trace_id or "", _LABELS)
    return parent


def worker_hooks(traceparent: str | None) -> None:
    now_ms = int(time.time() * 1000)
    envelope = RequestEnvelope(
        id="r1", endpoint=Endpoint.CHAT, model="llama", target="llama", consumer="team-a",
        created_ms=now_ms - 5, deadline_ms=now_ms + 60_000, reply_to="x", traceparent=traceparent, quota=None, output_guard=None, payload={},
    )  # fmt: skip
    with processing(envelope, now_ms - 4, "w1"):
        with post_processing():
            pass
        record_inference(
            Timings(
                received_ms=now_ms - 5, picked_up_ms=now_ms - 4, first_token_ms=now_ms - 3, finished_ms=now_ms
            )
        )
    metrics.WORKER_REQUESTS.labels("llama", "ack").inc()


def measure(requests: int) -> dict[str, list[float]]:
    tracer = trace.get_tracer("bench")
    out: dict[str, list[float]] = {"ingress": [], "worker": []}
    for _ in range(requests):
        t0 = time.perf_counter()
        parent = ingress_hooks(tracer)
        t1 = time.perf_counter()
        worker_hooks(parent)
        t2 = time.perf_counter()
        out["ingress"].append(t1 - t0)
        out["worker"].append(t2 - t1)
    return out


def _collector() -> str:
    """A stand-in OTLP/HTTP receiver that accepts every export, so the exporter runs as in production."""

    class Accept(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Accept)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/v1/traces"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--otlp", action="store_true", help="also export over OTLP (to a closed port)")
    args = parser.parse_args()
    log_file = Path(tempfile.mkdtemp()) / "requests.log"
    handler = logging.FileHandler(log_file)
    handler.setFormatter(JsonFormatter())
    logging.getLogger().handlers[:] = [handler]
    logging.getLogger().setLevel(logging.INFO)
    setup_tracing("bench", _collector() if args.otlp else None)
    assert context_from(ingress_hooks(trace.get_tracer("bench"))) is not None  # the link really works
    measure(2000)  # warm-up
    timings = measure(args.requests)
    print("| hooks | p50 | p99 | mean |")
    print("|---|---|---|---|")
    total = [a + b for a, b in zip(timings["ingress"], timings["worker"], strict=True)]
    for name, samples in (*timings.items(), ("per request, both", total)):
        print(
            f"| {name} | {percentile(samples, 50) * 1e6:.0f} µs | {percentile(samples, 99) * 1e6:.0f} µs "
            f"| {statistics.fmean(samples) * 1e6:.0f} µs |"
        )
    print(f"\n(request log lines written: {sum(1 for _ in log_file.open())})")


if __name__ == "__main__":
    main()
