"""/metrics is safe to expose: clients' model names never become series, and with a metrics token set
no consumer is visible without it. /openapi.json needs an API key unless configured otherwise."""

from __future__ import annotations

import random
import string

import httpx

from modelbus.embedded_nats import free_port
from schemas.config import ModelConfig, SimulatorBackend
from tests.support.servers import TEST_KEY, Cluster, wait_until, with_consumers

FAST = SimulatorBackend(ttft_ms=1, tokens_per_s=5000)
METRICS_TOKEN = "metrics-token-0123456789abcdef"
_AUTH = {"Authorization": f"Bearer {TEST_KEY}"}


def _hostile_name(rng: random.Random, kind: int | None = None) -> str:
    """NUL bytes, NATS wildcards, label syntax, very long names, other scripts, plain random ones."""
    kind = rng.randrange(6) if kind is None else kind
    if kind == 0:
        return "m\x00" + "".join(rng.choices(string.printable, k=8))
    if kind == 1:
        return rng.choice(["*", ">", "m.*", "m.>", "a b", "m\r\nX-Injected: 1"]) + str(rng.random())
    if kind == 2:
        return '"} evil{a="' + str(rng.random())
    if kind == 3:
        return "x" * rng.randrange(1_000, 20_000)
    if kind == 4:
        return "".join(rng.choices("модельのモデル😀\u202e", k=12))
    return "".join(rng.choices(string.ascii_letters + string.digits, k=16))


def _lines(url: str, headers: dict[str, str] | None = None) -> list[str]:
    response = httpx.get(url, headers=headers, timeout=10)
    response.raise_for_status()
    return response.text.splitlines()


def test_random_model_names_leave_metrics_the_same_size(cluster: Cluster) -> None:
    path = cluster.write_config(with_consumers([ModelConfig(name="m", backend=FAST)]))
    base = cluster.ingress(path)
    root = base.removesuffix("/v1")
    rng = random.Random(12)
    with httpx.Client(base_url=base, headers=_AUTH, timeout=30) as client:

        def send(model: str, endpoint: str) -> int:
            body: dict[str, object] = {"model": model, "input": "hi"}
            if endpoint == "/chat/completions":
                body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
            return client.post(endpoint, json=body).status_code

        endpoints = ["/chat/completions", "/embeddings"]
        for endpoint in endpoints:  # the `unknown` series of each endpoint and status exist from here on
            for kind in range(6):
                send(_hostile_name(rng, kind), endpoint)
        # The lag gauges of the configured model appear within one refresh (2 s).
        wait_until(
            lambda: any("modelbus_queue_pending{" in x for x in _lines(f"{root}/metrics")), 10, "no lag"
        )
        before = _lines(f"{root}/metrics")
        statuses = [send(_hostile_name(rng), rng.choice(endpoints)) for _ in range(1_000)]
        after = _lines(f"{root}/metrics")
    assert set(statuses) <= {400, 404}, sorted(set(statuses))
    assert len(after) == len(before), sorted(set(after) ^ set(before))[:20]
    text = "\n".join(after)
    assert "\x00" not in text and "\\x00" not in text and "evil" not in text and "xxxxxxxxxx" not in text
    assert 'model="unknown"' in text and 'gen_ai_request_model="unknown"' in text
    print(f"/metrics: {len(before)} lines before, {len(after)} after 1,000 random model names")


def test_metrics_token_hides_consumers_on_every_process(database_url: str, cluster: Cluster) -> None:
    path = cluster.write_config(with_consumers([ModelConfig(name="m", backend=FAST)]))
    worker_port, dispatcher_port = free_port(), free_port()
    token_env = {"MODELBUS_METRICS_TOKEN": METRICS_TOKEN}
    with cluster.together():
        cluster.dispatcher(path, database_url, MODELBUS_METRICS_PORT=str(dispatcher_port), **token_env)
        base = cluster.ingress(path, **token_env)
        cluster.worker("m", path, "w1", MODELBUS_METRICS_PORT=str(worker_port), **token_env)
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    httpx.post(f"{base}/chat/completions", headers=_AUTH, json=chat, timeout=30).raise_for_status()
    token = {"Authorization": f"Bearer {METRICS_TOKEN}"}
    ports = (worker_port, dispatcher_port)
    for url in (f"{base.removesuffix('/v1')}/metrics", *(f"http://127.0.0.1:{p}/metrics" for p in ports)):
        for headers in ({}, _AUTH, {"Authorization": "Bearer metrics-token"}):
            refused = httpx.get(url, headers=headers, timeout=10)
            assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
            assert "tester" not in refused.text and "modelbus_" not in refused.text
        assert httpx.get(url, headers=token, timeout=10).status_code == 200
    ingress_text = httpx.get(f"{base.removesuffix('/v1')}/metrics", headers=token, timeout=10).text
    assert 'consumer="tester"' in ingress_text
    # The metrics ports answer liveness probes without the token.
    for port in ports:
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200


def test_metrics_on_their_own_port_and_a_public_schema(cluster: Cluster) -> None:
    path = cluster.write_config(with_consumers([ModelConfig(name="m", backend=FAST)]))
    metrics_port = free_port()
    base = cluster.ingress(
        path, MODELBUS_INGRESS_METRICS_PORT=str(metrics_port), MODELBUS_API_SCHEMA="public"
    )
    root = base.removesuffix("/v1")
    assert httpx.get(f"{root}/metrics", timeout=10).status_code == 404
    assert "modelbus_" in httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    assert httpx.get(f"{root}/openapi.json", timeout=10).json()["info"]["title"] == "Modelbus"


def test_api_schema_needs_a_key_by_default_and_can_be_off(cluster: Cluster) -> None:
    path = cluster.write_config(with_consumers([ModelConfig(name="m", backend=FAST)]))
    root = cluster.ingress(path).removesuffix("/v1")
    refused = httpx.get(f"{root}/openapi.json", timeout=10)
    assert refused.status_code == 401 and "paths" not in refused.text
    schema = httpx.get(f"{root}/openapi.json", headers=_AUTH, timeout=10).json()
    assert "/v1/chat/completions" in schema["paths"]
    for page in ("/docs", "/redoc"):
        assert httpx.get(f"{root}{page}", headers=_AUTH, timeout=10).status_code == 404
    off = cluster.ingress(path, MODELBUS_API_SCHEMA="off").removesuffix("/v1")
    assert httpx.get(f"{off}/openapi.json", headers=_AUTH, timeout=10).status_code == 404
