"""Backend failures: retried where safe, answered cleanly otherwise, never left hanging."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from schemas.config import ModelConfig, OpenAIBackend, SimulatorBackend
from tests.support.servers import TEST_KEY, Cluster, wait_until, with_consumers

MSG = [{"role": "user", "content": "hello"}]


def test_backend_down_everywhere_ends_in_a_clean_retryable_503(cluster: Cluster) -> None:
    cluster.env_overrides["MODELBUS_MAX_DELIVER"] = "2"
    model = ModelConfig(name="broken", backend=SimulatorBackend(error_rate=1.0))
    config = cluster.write_config(with_consumers([model]))
    with cluster.together():
        gateway = cluster.ingress(config)
        worker = cluster.worker("broken", config, "w-1")
    started = time.monotonic()
    response = httpx.post(
        f"{gateway}/chat/completions",
        json={"model": "broken", "messages": MSG},
        headers={"Authorization": f"Bearer {TEST_KEY}"},
        timeout=30,
    )
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "backend_unavailable"
    assert response.headers["retry-after"]
    # First delivery: local retries, then a nak with a 2 s delay; the second and last delivery
    # answers with the error.
    assert 2.0 <= time.monotonic() - started < 10
    assert "leaving it for redelivery" in worker.log()
    wait_until(lambda: cluster.consumer_info("broken").num_ack_pending == 0, 5, "message left unsettled")
    assert cluster.consumer_info("broken").num_pending == 0


def test_backend_rejection_of_the_request_is_passed_through_as_400(cluster: Cluster) -> None:
    with cluster.together():
        sim_url, _ = cluster.simulator("--ttft-ms", "0")
        backend = OpenAIBackend(base_url=f"{sim_url}/v1", served_model="simulated")
        config = cluster.write_config(with_consumers([ModelConfig(name="picky", backend=backend)]))
        gateway = cluster.ingress(config)
        cluster.worker("picky", config, "w-1")
    client = openai.OpenAI(base_url=gateway, api_key=TEST_KEY, max_retries=0)
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as caught:
            result = client.chat.completions.create(
                model="picky", messages=MSG, max_tokens=50_000, stream=stream
            )
            if stream:
                list(result)  # type: ignore[arg-type]
        assert "context length" in caught.value.message
    # Not retried: a 4xx is the request's fault. The backend saw each request exactly once.
    assert httpx.get(f"{sim_url}/stats").json()["started"] == 0


def test_unreachable_backend_is_retried_then_reported(cluster: Cluster) -> None:
    cluster.env_overrides["MODELBUS_MAX_DELIVER"] = "2"
    backend = OpenAIBackend(base_url="http://127.0.0.1:9/v1", connect_timeout_s=0.5)  # discard port: refused
    config = cluster.write_config(with_consumers([ModelConfig(name="offline", backend=backend)]))
    with cluster.together():
        gateway = cluster.ingress(config)
        cluster.worker("offline", config, "w-1")
    client = openai.OpenAI(base_url=gateway, api_key=TEST_KEY, max_retries=0)
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="offline", messages=MSG)
    assert caught.value.status_code == 503
    assert "127.0.0.1:9" not in caught.value.message  # no internal topology in client errors
