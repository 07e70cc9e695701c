"""Routing by cost and latency against real servers: a pool of a cheap, slow-to-drain model and a
dear, fast one; requests name the pool and what they need; the cost each consumer ran up is counted
and shown by `modelbus top`."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time

import httpx

from schemas.config import ModelConfig, SimulatorBackend
from schemas.traffic import Cost, PoolConfig
from tests.support.servers import ADMIN_KEY, TEST_KEY, Cluster, wait_until, with_consumers

AUTH = {"Authorization": f"Bearer {TEST_KEY}"}


def _ask(base: str, model: str = "chat", **headers: str) -> httpx.Response:
    body = {"model": model, "max_tokens": 4, "messages": [{"role": "user", "content": "hello"}]}
    return httpx.post(f"{base}/chat/completions", json=body, headers={**AUTH, **headers}, timeout=60)


def _estimated_wait_s(base: str, model: str) -> float:
    """The live capacity view's estimate (the same one the ingress routes by)."""
    view = httpx.get(
        f"{base.removesuffix('/v1')}/admin/capacity", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    )
    return max((row["estimated_wait_s"] or 0.0) for row in view.json()["data"] if row["model"] == model)


def test_pool_picks_the_cheapest_member_whose_wait_fits(cluster: Cluster) -> None:
    # One slot and 0.8 s per answer: a handful of requests make its queue seconds long.
    cheap = ModelConfig(
        name="cheap",
        backend=SimulatorBackend(ttft_ms=800, tokens_per_s=5000, capacity=1),
        max_concurrency=1,
        cost=Cost(input_per_1k=0.1, output_per_1k=0.2),
    )
    dear = ModelConfig(
        name="dear",
        backend=SimulatorBackend(ttft_ms=2, tokens_per_s=5000),
        cost=Cost(input_per_1k=1, output_per_1k=2),
    )
    config = with_consumers([cheap, dear])
    config.pools = [PoolConfig(name="chat", members=["dear", "cheap"])]
    path = cluster.write_config(config)
    with cluster.together():
        base = cluster.ingress(path)
        cluster.worker("cheap", path, "w-cheap")
        cluster.worker("dear", path, "w-dear")

    first = _ask(base)  # cost only: the cheaper member, whatever the order in the pool
    assert first.status_code == 200, first.text
    assert first.headers["x-modelbus-model"] == "cheap"
    assert first.headers["x-modelbus-route"].startswith("pool:chat->cheap (cheapest;")
    assert {m["id"] for m in httpx.get(f"{base}/models", headers=AUTH).json()["data"]} >= {"chat"}

    # Saturate the cheap member: its queue now takes seconds to drain.
    load = [threading.Thread(target=_ask, args=(base, "cheap")) for _ in range(10)]
    for thread in load:
        thread.start()
    wait_until(lambda: _estimated_wait_s(base, "cheap") > 2.5, 30, "the cheap member's queue never grew")
    time.sleep(1.5)  # the ingress refreshes its view of the queues every second
    hurried = _ask(base, **{"x-modelbus-max-wait-ms": "1000"})
    route = hurried.headers["x-modelbus-route"]
    assert hurried.headers["x-modelbus-model"] == "dear", route
    assert route.startswith("pool:chat->dear (cheapest within max_wait_ms=1000; wait 0.00s"), route
    patient = _ask(base)  # no wait asked for: still the cheaper one, queue or not
    assert patient.headers["x-modelbus-model"] == "cheap", patient.headers
    for thread in load:
        thread.join()

    refused = _ask(base, **{"x-modelbus-max-cost": "0.0000001"})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "cost_over_limit", refused.text
    bad = _ask(base, **{"x-modelbus-max-wait-ms": "soon"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_header"

    # What each consumer spent, at the models' prices, counted by the workers and shown by `top`.
    def cost_shown() -> float:
        top = subprocess.run(
            [sys.executable, "-m", "modelbus.cli", "top", "--once"],
            check=False,
            env=cluster.env(path),
            capture_output=True,
            text=True,
            timeout=60,
        )
        found = re.search(r"│\s*tester\s*│\s*all models\s*│(?:[^│]*│){3}\s*([0-9.]+)\s*│", top.stdout)
        return float(found.group(1)) if found else 0.0

    wait_until(lambda: cost_shown() > 0, 15, "modelbus top shows no cost for the consumer")
