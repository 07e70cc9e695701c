"""Delivery guarantees end to end: capacity, crashes, disconnects, and waiting for a worker."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter

import httpx
import openai
import pytest

from schemas.config import ModelConfig, OpenAIBackend, SimulatorBackend
from tests.support.servers import TEST_KEY, Cluster, wait_until, with_consumers

AUTH = {"Authorization": f"Bearer {TEST_KEY}"}
MSG = [{"role": "user", "content": "hello"}]


def _http_backend(url: str) -> OpenAIBackend:
    return OpenAIBackend(base_url=f"{url}/v1", served_model="simulated")


def test_workers_never_exceed_capacity_and_share_work_by_capacity(cluster: Cluster) -> None:
    sim_options = ["--ttft-ms", "40", "--tokens-per-s", "200", "--capacity", "64"]
    with cluster.together():
        small_url, _ = cluster.simulator(*sim_options)
        large_url, _ = cluster.simulator(*sim_options)
        small = cluster.write_config(
            with_consumers([ModelConfig(name="shared", backend=_http_backend(small_url), max_concurrency=2)]),
            "a.yaml",
        )
        large = cluster.write_config(
            with_consumers([ModelConfig(name="shared", backend=_http_backend(large_url), max_concurrency=8)]),
            "b.yaml",
        )
        gateway = cluster.ingress(small)
        cluster.worker("shared", small, "w-small")
        cluster.worker("shared", large, "w-large")

    async def run() -> Counter[str]:
        async with httpx.AsyncClient(base_url=gateway, headers=AUTH, timeout=60) as client:
            body = {"model": "shared", "messages": MSG, "max_tokens": 20}
            responses = await asyncio.gather(
                *(client.post("/chat/completions", json=body) for _ in range(40))
            )
        assert all(r.status_code == 200 for r in responses), [
            r.text for r in responses if r.status_code != 200
        ]
        return Counter(r.headers["x-modelbus-worker"] for r in responses)

    served = asyncio.run(run())
    small_stats = httpx.get(f"{small_url}/stats").json()
    large_stats = httpx.get(f"{large_url}/stats").json()
    # Measured at the backends: the most requests each worker ever had in flight at once.
    assert small_stats["max_active"] <= 2
    assert large_stats["max_active"] <= 8
    assert large_stats["max_active"] >= 6  # the large worker really used its slots
    assert small_stats["completed"] == served["w-small"]
    assert large_stats["completed"] == served["w-large"]
    assert served["w-small"] + served["w-large"] == 40
    # Capacity is 2:8, so the large worker must carry clearly more (ideal share 80%).
    assert served["w-small"] >= 1
    assert served["w-large"] / 40 >= 0.6, served


def test_request_survives_worker_killed_mid_request(cluster: Cluster) -> None:
    model = ModelConfig(name="slow", backend=SimulatorBackend(ttft_ms=1500, tokens_per_s=1000))
    config = cluster.write_config(with_consumers([model]))
    with cluster.together():
        gateway = cluster.ingress(config)
        doomed = cluster.worker("slow", config, "w-doomed")
    result: dict[str, httpx.Response] = {}

    def call() -> None:
        with httpx.Client(base_url=gateway, headers=AUTH, timeout=30) as client:
            result["response"] = client.post(
                "/chat/completions", json={"model": "slow", "messages": MSG, "max_tokens": 3}
            )

    caller = threading.Thread(target=call)
    caller.start()
    wait_until(lambda: cluster.consumer_info("slow").num_ack_pending == 1, 10, "worker never picked it up")
    doomed.kill()  # mid-request: the backend has not answered yet (1.5 s to the first token)
    cluster.worker("slow", config, "w-survivor")
    caller.join(30)
    response = result["response"]
    assert response.status_code == 200, response.text
    assert response.headers["x-modelbus-worker"] == "w-survivor"
    assert len(response.json()["choices"][0]["message"]["content"].split()) == 3


def test_stream_ends_with_error_event_when_worker_dies(cluster: Cluster) -> None:
    model = ModelConfig(
        name="talky", backend=SimulatorBackend(ttft_ms=0, tokens_per_s=20, default_max_tokens=400)
    )
    config = cluster.write_config(with_consumers([model]))
    with cluster.together():
        gateway = cluster.ingress(config)
        doomed = cluster.worker("talky", config, "w-doomed")
    client = openai.OpenAI(base_url=gateway, api_key=TEST_KEY, max_retries=0, timeout=30)
    stream = client.chat.completions.create(model="talky", messages=MSG, stream=True)
    received = 0
    started = time.monotonic()
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            received += 1
            if received == 3:
                doomed.kill()
                killed_at = time.monotonic()
    assert received >= 3
    assert "worker" in str(caught.value).lower()
    # Detected by reply silence (idle timeout 1.5 s in tests), not by some long transport timeout.
    assert time.monotonic() - killed_at < 5
    assert time.monotonic() - started < 15


def test_client_disconnect_aborts_backend_within_a_second(cluster: Cluster) -> None:
    with cluster.together():
        sim_url, _ = cluster.simulator(
            "--ttft-ms", "0", "--tokens-per-s", "20", "--default-max-tokens", "400"
        )
        model = ModelConfig(name="abortable", backend=_http_backend(sim_url))
        config = cluster.write_config(with_consumers([model]))
        gateway = cluster.ingress(config)
        cluster.worker("abortable", config, "w-1")
    with httpx.Client(base_url=gateway, headers=AUTH, timeout=30) as client:
        body = {"model": "abortable", "messages": MSG, "stream": True}
        with client.stream("POST", "/chat/completions", json=body) as response:
            lines = 0
            for line in response.iter_lines():
                lines += line.startswith("data:")
                if lines == 3:
                    break
        disconnected_at = time.time()
    wait_until(lambda: httpx.get(f"{sim_url}/stats").json()["aborted"] == 1, 5, "backend never aborted")
    stats = httpx.get(f"{sim_url}/stats").json()
    assert stats["abort_times"][0] - disconnected_at < 1.0
    assert stats["completed"] == 0


def test_request_waits_for_a_worker_until_its_deadline(cluster: Cluster) -> None:
    with cluster.together():
        sim_url, _ = cluster.simulator("--ttft-ms", "0")
        model = ModelConfig(name="lonely", backend=_http_backend(sim_url))
        config = cluster.write_config(with_consumers([model]))
        gateway = cluster.ingress(config)
    with httpx.Client(base_url=gateway, headers=AUTH, timeout=30) as client:
        started = time.monotonic()
        response = client.post(
            "/chat/completions",
            json={"model": "lonely", "messages": MSG},
            headers={"x-modelbus-timeout": "2"},
        )
        elapsed = time.monotonic() - started
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "deadline_exceeded"
    assert 1.9 <= elapsed < 4

    result: dict[str, httpx.Response] = {}

    def call() -> None:
        with httpx.Client(base_url=gateway, headers=AUTH, timeout=30) as client:
            result["r"] = client.post(
                "/chat/completions",
                json={"model": "lonely", "messages": MSG, "max_tokens": 2},
                headers={"x-modelbus-timeout": "20"},
            )

    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(1.0)
    cluster.worker("lonely", config, "w-late")
    caller.join(30)
    assert result["r"].status_code == 200, result["r"].text
    assert int(result["r"].headers["x-modelbus-queue-ms"]) >= 900
    # The request that timed out was never run: the backend saw exactly one request.
    time.sleep(0.5)
    assert httpx.get(f"{sim_url}/stats").json()["started"] == 1


def test_openai_sdk_timeout_bounds_the_queue_wait(cluster: Cluster) -> None:
    config = cluster.write_config(with_consumers([ModelConfig(name="nobody-home")]))
    gateway = cluster.ingress(config)
    client = openai.OpenAI(base_url=gateway, api_key=TEST_KEY, max_retries=0, timeout=3)
    started = time.monotonic()
    with pytest.raises((openai.APIStatusError, openai.APITimeoutError)):
        client.chat.completions.create(model="nobody-home", messages=MSG)
    assert time.monotonic() - started < 5
    # The SDK's own timeout became the request deadline, so the queue is empty again soon after.
    wait_until(lambda: cluster.consumer_info("nobody-home").num_pending == 0, 10, "stale request left queued")


def test_worker_stopped_with_sigterm_finishes_in_flight_work(cluster: Cluster) -> None:
    model = ModelConfig(name="drainable", backend=SimulatorBackend(ttft_ms=1000, tokens_per_s=1000))
    config = cluster.write_config(with_consumers([model]))
    with cluster.together():
        gateway = cluster.ingress(config)
        worker = cluster.worker("drainable", config, "w-draining")
    result: dict[str, httpx.Response] = {}

    def call() -> None:
        with httpx.Client(base_url=gateway, headers=AUTH, timeout=30) as client:
            body = {"model": "drainable", "messages": MSG, "max_tokens": 2}
            result["r"] = client.post("/chat/completions", json=body)

    caller = threading.Thread(target=call)
    caller.start()
    wait_until(lambda: cluster.consumer_info("drainable").num_ack_pending == 1, 10, "never picked up")
    worker.stop(timeout=20)  # SIGTERM: stop pulling, finish what is in flight
    caller.join(30)
    assert result["r"].status_code == 200
    assert result["r"].headers["x-modelbus-worker"] == "w-draining"
    assert worker.popen.returncode == 0


def test_any_of_several_nats_urls_will_do(cluster: Cluster) -> None:
    from modelbus.embedded_nats import free_port

    config = cluster.write_config(with_consumers([ModelConfig(name="m")]))
    dead = f"nats://127.0.0.1:{free_port()}"
    cluster.env_overrides["MODELBUS_NATS_URL"] = f"{dead},{cluster.nats_url}"
    with cluster.together():
        gateway = cluster.ingress(config)
        cluster.worker("m", config, "w-1")
    client = openai.OpenAI(base_url=gateway, api_key=TEST_KEY, max_retries=0)
    assert client.chat.completions.create(model="m", messages=MSG, max_tokens=1).choices
