"""Configuration as code: applied with the CLI, picked up by every running process within 2 s."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from dispatcher.config.config_file import dump_config
from schemas.config import ModelConfig, ScriptedReply, SimulatorBackend
from tests.support.servers import ADMIN_KEY, TEST_KEY, Cluster, wait_until, with_consumers

AUTH = {"Authorization": f"Bearer {TEST_KEY}"}
FAST = SimulatorBackend(ttft_ms=2, tokens_per_s=5000)


def _cli(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelbus.cli", "config", *args],
        check=False,
        env=cluster.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def _models(base: str) -> set[str]:
    return {m["id"] for m in httpx.get(f"{base}/models", headers=AUTH, timeout=5).json()["data"]}


def test_applied_config_reaches_three_ingresses_within_two_seconds_without_dropping(cluster: Cluster) -> None:
    first = with_consumers([ModelConfig(name="m1", backend=FAST)])
    bootstrap = cluster.write_config(first, "bootstrap.yaml")
    gateways = [cluster.ingress(bootstrap) for _ in range(3)]
    cluster.worker("m1", bootstrap, "w-m1")
    assert all(_models(g) == {"m1"} for g in gateways)

    statuses: list[int] = []
    running = threading.Event()
    running.set()

    failures: list[str] = []

    def load() -> None:
        with httpx.Client(headers=AUTH, timeout=30) as client:
            n = 0
            while running.is_set():
                body = {"model": "m1", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]}
                try:
                    statuses.append(client.post(f"{gateways[n % 3]}/chat/completions", json=body).status_code)
                except httpx.HTTPError as exc:  # counted, so a dropped request cannot end the load unseen
                    failures.append(f"{type(exc).__name__}: {exc}")
                n += 1

    loader = threading.Thread(target=load)
    loader.start()
    time.sleep(0.5)
    second = cluster.tmp / "second.yaml"
    second.write_text(
        dump_config(
            with_consumers([ModelConfig(name="m1", backend=FAST), ModelConfig(name="m2", backend=FAST)])
        )
    )
    diff = _cli(cluster, "diff", str(second))
    assert "+  - name: m2" in diff.stdout or "+- name: m2" in diff.stdout, diff.stdout
    applied = _cli(cluster, "apply", str(second))
    assert applied.returncode == 0, applied.stderr
    applied_at = time.monotonic()
    seen: dict[str, float] = {}
    while len(seen) < 3 and time.monotonic() - applied_at < 10:
        for gateway in gateways:
            if gateway not in seen and "m2" in _models(gateway):
                seen[gateway] = time.monotonic() - applied_at
        time.sleep(0.02)
    time.sleep(0.5)
    running.clear()
    loader.join(30)

    assert len(seen) == 3 and max(seen.values()) < 2.0, seen
    assert not loader.is_alive() and not failures, failures
    assert statuses and set(statuses) == {200}, f"{len(statuses)} requests, statuses {set(statuses)}"
    # The new model is served as soon as a worker for it appears (it reads the applied config).
    cluster.worker("m2", bootstrap, "w-m2")
    reply = httpx.post(
        f"{gateways[0]}/chat/completions",
        headers=AUTH,
        timeout=30,
        json={"model": "m2", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]},
    )
    assert reply.status_code == 200 and reply.headers["x-modelbus-worker"] == "w-m2"
    shown = _cli(cluster, "show")
    assert "name: m2" in shown.stdout


def test_invalid_config_is_refused_naming_field_and_line(cluster: Cluster) -> None:
    bootstrap = cluster.write_config(with_consumers([ModelConfig(name="m1", backend=FAST)]))
    gateway = cluster.ingress(bootstrap)
    bad = cluster.tmp / "bad.yaml"
    bad.write_text("models:\n  - name: m1\n  - name: m2\n    max_concurrency: 0\n")
    for command in ("validate", "apply"):
        result = _cli(cluster, command, str(bad))
        assert result.returncode == 1
        assert "models.1.max_concurrency (line 4)" in result.stderr
    time.sleep(1.0)
    assert _models(gateway) == {"m1"}  # the running configuration stayed
    assert _cli(cluster, "show").returncode == 1  # and nothing was stored


def test_a_worker_takes_a_new_capacity_and_backend_without_dropping_work(cluster: Cluster) -> None:
    def backend(reply: str, ttft_ms: float) -> SimulatorBackend:
        return SimulatorBackend(
            ttft_ms=ttft_ms, tokens_per_s=5000, script=[ScriptedReply(match="^who", reply=reply)]
        )

    first = with_consumers([ModelConfig(name="m", max_concurrency=1, backend=backend("old backend", 1500))])
    path = cluster.write_config(first, "first.yaml")
    with cluster.together():
        gateway = cluster.ingress(path)
        cluster.worker("m", path, "w-m")
    body = {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "who are you"}]}
    in_flight: list[httpx.Response] = []
    sender = threading.Thread(
        target=lambda: in_flight.append(
            httpx.post(f"{gateway}/chat/completions", json=body, headers=AUTH, timeout=30)
        )
    )
    sender.start()
    time.sleep(0.4)  # the first request is being served by the old backend
    second = cluster.write_config(
        with_consumers([ModelConfig(name="m", max_concurrency=3, backend=backend("new backend", 300))]),
        "second.yaml",
    )
    assert _cli(cluster, "apply", str(second)).returncode == 0
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}

    def capacity() -> int:
        rows = httpx.get(f"{gateway[:-3]}/admin/capacity", headers=admin, timeout=5).json()["data"]
        return sum(row["capacity"] for row in rows if row["model"] == "m")

    wait_until(lambda: capacity() == 3, 10, "the worker kept its old capacity")
    sender.join(30)
    assert in_flight and in_flight[0].status_code == 200  # not dropped by the swap
    assert in_flight[0].json()["choices"][0]["message"]["content"] == "old backend"
    with ThreadPoolExecutor(max_workers=3) as pool:
        replies = list(
            pool.map(
                lambda _: httpx.post(f"{gateway}/chat/completions", json=body, headers=AUTH, timeout=30),
                range(3),
            )
        )
    assert [r.json()["choices"][0]["message"]["content"] for r in replies] == ["new backend"] * 3
    # Three slots now: none of the three waited for another (one slot would make the last wait ~600 ms).
    assert max(int(r.headers["x-modelbus-queue-ms"]) for r in replies) < 250, [
        r.headers["x-modelbus-queue-ms"] for r in replies
    ]
