"""/metrics after a scripted scenario: every family present, and the numbers right."""

from __future__ import annotations

import re

import httpx
import openai
from prometheus_client.parser import text_string_to_metric_families

from dispatcher.policy.api_keys import hash_key
from modelbus.embedded_nats import free_port
from schemas.config import ApiKey, ConsumerConfig, ModelConfig, SimulatorBackend
from schemas.policy import GuardrailsConfig, Limits
from tests.support.servers import ADMIN_KEY, OTHER_KEY, TEST_KEY, Cluster, wait_until, with_consumers

FAST = SimulatorBackend(ttft_ms=5, tokens_per_s=2000)
LIMITED_KEY = "mb-test-limited-0123456789abcdef0123456789abcd"
DEGRADED_KEY = "mb-test-degraded-0123456789abcdef0123456789abc"


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def _value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def _chat(base: str, key: str, model: str, content: str = "hello there") -> httpx.Response:
    return httpx.post(
        f"{base}/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": model, "max_tokens": 3, "messages": [{"role": "user", "content": content}]},
        timeout=30,
    )


def test_metrics_after_a_scripted_scenario(cluster: Cluster, database_url: str) -> None:
    config = with_consumers(
        [
            ModelConfig(name="m", backend=FAST, max_concurrency=4),
            ModelConfig(name="g", backend=FAST, guardrails=GuardrailsConfig(pii="mask")),
            ModelConfig(name="down", backend=FAST, fallbacks=["m"]),
        ]
    )
    config.consumers += [
        ConsumerConfig(
            name="limited", roles=["user"], keys=[ApiKey(id="lim", hash=hash_key(LIMITED_KEY))],
            limits=Limits(requests_per_min=3),
        ),
        ConsumerConfig(
            name="degraded", roles=["user"], keys=[ApiKey(id="deg", hash=hash_key(DEGRADED_KEY))],
            degradation=["fallback"],
        ),
    ]  # fmt: skip
    path = cluster.write_config(config)
    dispatcher_port, worker_port = free_port(), free_port()
    with cluster.together():
        cluster.dispatcher(path, database_url, MODELBUS_METRICS_PORT=str(dispatcher_port))
        base = cluster.ingress(path)
        cluster.worker("m", path, "w-m", MODELBUS_METRICS_PORT=str(worker_port))
        cluster.worker("g", path, "w-g")

    # N = 5 served requests, M = 2 rejections by the rate limit, 1 degradation (fallback), 1 guardrail.
    usage = {"input": 0, "output": 0}
    for _ in range(3):
        response = _chat(base, TEST_KEY, "m")
        assert response.status_code == 200
        usage["input"] += response.json()["usage"]["prompt_tokens"]
        usage["output"] += response.json()["usage"]["completion_tokens"]
    client = openai.OpenAI(base_url=base, api_key=TEST_KEY, max_retries=0)
    for _ in range(2):  # streamed: these have a time to first token
        for chunk in client.chat.completions.create(
            model="m", max_tokens=3, stream=True, stream_options={"include_usage": True},
            messages=[{"role": "user", "content": "hello there"}],
        ):  # fmt: skip
            if chunk.usage is not None:
                usage["input"] += chunk.usage.prompt_tokens
                usage["output"] += chunk.usage.completion_tokens
    statuses = [_chat(base, LIMITED_KEY, "m").status_code for _ in range(5)]
    assert sorted(statuses) == [200, 200, 200, 429, 429]
    degraded = _chat(base, DEGRADED_KEY, "down")
    assert degraded.status_code == 200 and degraded.headers["x-modelbus-degraded"] == "fallback:m"
    assert _chat(base, OTHER_KEY, "g", "mail me at a.b@example.com").status_code == 200

    root = base.removesuffix("/v1")

    def scrape() -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        return _samples(httpx.get(f"{root}/metrics", timeout=10).text)

    # Lag and capacity gauges are refreshed in the background (every 2 s): wait for a refresh after
    # the last request settled.
    wait_until(
        lambda: (
            (s := scrape())
            and _value(s, "modelbus_workers", model="m") == 1
            and _value(s, "modelbus_queue_ack_pending", model="m") == 0
        ),
        15,
        "gauges never settled",
    )
    samples = scrape()
    v = lambda name, **labels: _value(samples, name, **labels)

    assert v("modelbus_requests_total", model="m", consumer="tester", status="200") == 5
    assert v("modelbus_requests_total", model="m", consumer="limited", status="200") == 3
    assert v("modelbus_requests_total", model="m", consumer="limited", status="429") == 2
    assert v("modelbus_ratelimit_rejections_total", consumer="limited", limit="requests_per_min") == 2
    assert v("modelbus_degradations_total", model="down", how="fallback") == 1
    assert v("modelbus_guardrail_actions_total", detector="pii.email", action="mask", direction="input") == 1
    assert v("gen_ai_client_operation_duration_seconds_count", gen_ai_request_model="m", status="200") == 8
    assert v("gen_ai_client_operation_duration_seconds_count", gen_ai_request_model="m", status="429") == 2
    # Token counts equal what the responses reported.
    assert v("modelbus_tokens_total", model="m", consumer="tester", type="input") == usage["input"]
    assert v("modelbus_tokens_total", model="m", consumer="tester", type="output") == usage["output"] == 15
    assert v("gen_ai_client_token_usage_count", gen_ai_token_type="output", gen_ai_request_model="m") == 8
    # The breakdown: one observation per served request of each phase.
    for phase in ("gateway_overhead", "queue_wait", "inference", "post_processing"):
        assert v("modelbus_request_phase_seconds_count", phase=phase, model="m") == 8, phase
    # Time to first token exists for the two streamed requests, and is at least the simulator's 5 ms.
    assert v("modelbus_request_phase_seconds_count", phase="time_to_first_token", model="m") == 2
    assert v("gen_ai_server_time_to_first_token_seconds_count", gen_ai_request_model="m") == 2
    assert v("gen_ai_server_time_to_first_token_seconds_sum", gen_ai_request_model="m") >= 0.01
    # JetStream lag and capacity per model: nothing queued now, one worker with 4 free slots.
    assert v("modelbus_queue_pending", model="m") == 0
    assert v("modelbus_queue_ack_pending", model="m") == 0
    assert (
        "modelbus_queue_redelivered",
        frozenset({("model", "m"), ("version", "default"), ("lane", "interactive")}),
    ) in samples
    assert v("modelbus_queue_waiting_pulls", model="m") >= 1  # the idle worker's open pull
    assert v("modelbus_free_slots", model="m") == 4
    assert v("modelbus_workers", model="down") == 0
    assert v("modelbus_config_reloads_total", component="ingress", result="applied") == 0
    assert v("modelbus_config_reloads_total", component="ingress", result="rejected") == 0
    assert v("modelbus_nats_connected", component="ingress") == 1

    worker = _samples(httpx.get(f"http://127.0.0.1:{worker_port}/metrics", timeout=10).text)
    assert _value(worker, "modelbus_backend_connections", model="m", state="limit") == 4
    assert _value(worker, "modelbus_backend_connections", model="m", state="in_use") == 0
    assert ("modelbus_worker_in_flight", frozenset({("model", "m"), ("version", "default")})) in worker
    assert _value(worker, "modelbus_worker_in_flight", model="m") == 0
    assert (
        _value(worker, "modelbus_worker_requests_total", model="m", outcome="ack") == 9
    )  # 5 + 3 + the fallback
    assert _value(worker, "modelbus_nats_connected", component="worker") == 1
    dispatcher = _samples(httpx.get(f"http://127.0.0.1:{dispatcher_port}/metrics", timeout=10).text)
    assert ("modelbus_audit_sink_pending", frozenset()) in dispatcher
    assert _value(dispatcher, "modelbus_nats_connected", component="dispatcher") == 1

    # No secret in any metrics text.
    texts = [
        httpx.get(u, timeout=10).text for u in (f"{root}/metrics", f"http://127.0.0.1:{worker_port}/metrics")
    ]
    for secret in (TEST_KEY, OTHER_KEY, ADMIN_KEY, LIMITED_KEY, DEGRADED_KEY, "a.b@example.com"):
        assert all(secret not in text for text in texts)
    assert not any(re.search(r"mb-[A-Za-z0-9_-]{20,}", text) for text in texts)
