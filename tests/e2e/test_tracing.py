"""One trace per request across processes: ingress -> NATS -> worker, for a streamed request.

Each process exports its finished spans as JSON lines (`MODELBUS_TRACE_FILE`), an in-memory record
of what an OTLP collector would receive; the test joins them and checks the parent links.
"""

from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path
from typing import ClassVar

import openai

from schemas.config import ModelConfig, SimulatorBackend
from tests.support.servers import TEST_KEY, Cluster, wait_until, with_consumers


def _spans(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_streamed_request_is_one_connected_trace_across_processes(cluster: Cluster, tmp_path: Path) -> None:
    path = cluster.write_config(
        with_consumers([ModelConfig(name="m", backend=SimulatorBackend(ttft_ms=20, tokens_per_s=500))])
    )
    ingress_spans, worker_spans = tmp_path / "ingress-spans.jsonl", tmp_path / "worker-spans.jsonl"
    with cluster.together():
        base = cluster.ingress(path, MODELBUS_TRACE_FILE=str(ingress_spans))
        cluster.worker("m", path, "w1", MODELBUS_TRACE_FILE=str(worker_spans))
    client = openai.OpenAI(base_url=base, api_key=TEST_KEY, max_retries=0)
    caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    stream = client.chat.completions.create(
        model="m",
        stream=True,
        max_tokens=8,
        messages=[{"role": "user", "content": "trace me"}],
        extra_headers={"traceparent": f"00-{caller_trace}-00f067aa0ba902b7-01"},
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    wait_until(
        lambda: any(s["name"] == "inference" for s in _spans(worker_spans)), 10, "worker spans missing"
    )
    wait_until(lambda: any(s["kind"] == "SERVER" for s in _spans(ingress_spans)), 10, "ingress spans missing")
    spans = _spans(ingress_spans) + _spans(worker_spans)
    by_id = {s["span_id"]: s for s in spans}
    # One trace: the caller's, continued by the ingress and by the worker in another process.
    assert {s["trace_id"] for s in spans} == {caller_trace}
    assert {s["service"] for s in spans} == {"modelbus-ingress", "modelbus-worker"}
    server = next(s for s in spans if s["kind"] == "SERVER")
    assert server["parent_id"] == "00f067aa0ba902b7"  # the caller's span
    names = {s["name"]: s for s in spans}
    for name in ("auth", "policy", "enqueue", "queue wait", "inference", "generation", "post-processing"):
        assert name in names, (name, sorted(names))
    enqueue = names["enqueue"]
    assert enqueue["kind"] == "PRODUCER" and enqueue["attributes"]["messaging.system"] == "nats"
    process = next(s for s in spans if s["kind"] == "CONSUMER")
    # The worker's span hangs off the ingress's enqueue span: the link crossed NATS in the envelope.
    assert process["parent_id"] == enqueue["span_id"] and process["service"] == "modelbus-worker"

    def ancestors(span: dict[str, object]) -> list[str]:
        chain = []
        while span["parent_id"] in by_id:
            span = by_id[span["parent_id"]]
            chain.append(str(span["name"]))
        return chain

    # Every span leads up to the server span.
    for span in spans:
        if span is not server:
            assert server["name"] in ancestors(span), (span["name"], ancestors(span))
    assert names["generation"]["parent_id"] == names["inference"]["span_id"]
    assert names["inference"]["attributes"]["gen_ai.server.time_to_first_token"] >= 0.02


class _Receiver(http.server.BaseHTTPRequestHandler):
    """A live OTLP/HTTP endpoint on loopback: keeps what the exporters POST."""

    received: ClassVar[list[tuple[str, str, bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        self.received.append((self.path, self.headers.get("content-type", ""), body))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


def test_spans_reach_a_live_otlp_receiver(cluster: Cluster) -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    _Receiver.received = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}/v1/traces"
    try:
        path = cluster.write_config(
            with_consumers([ModelConfig(name="m", backend=SimulatorBackend(ttft_ms=1))])
        )
        with cluster.together():
            base = cluster.ingress(path, MODELBUS_OTLP_ENDPOINT=endpoint)
            cluster.worker("m", path, "w1", MODELBUS_OTLP_ENDPOINT=endpoint)
        client = openai.OpenAI(base_url=base, api_key=TEST_KEY, max_retries=0)
        client.chat.completions.create(model="m", max_tokens=2, messages=[{"role": "user", "content": "hi"}])

        def services() -> set[str]:
            found = set()
            for _, _, body in list(_Receiver.received):
                request = ExportTraceServiceRequest.FromString(body)
                for resource_spans in request.resource_spans:
                    for attribute in resource_spans.resource.attributes:
                        if attribute.key == "service.name":
                            found.add(attribute.value.string_value)
            return found

        # The batching exporters send within their schedule delay.
        wait_until(
            lambda: services() >= {"modelbus-ingress", "modelbus-worker"}, 20, "no OTLP export arrived"
        )
        assert all(p == "/v1/traces" and t == "application/x-protobuf" for p, t, _ in _Receiver.received)
    finally:
        server.shutdown()
