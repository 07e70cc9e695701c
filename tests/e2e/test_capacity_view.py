"""The live capacity view: workers appear with their slots, vanish when they stop, queues show."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import httpx

from schemas.config import ModelConfig, SimulatorBackend
from tests.support.servers import ADMIN_KEY, TEST_KEY, Cluster, wait_until, with_consumers


def _view(gateway: str) -> dict[str, dict[str, object]]:
    admin = gateway.removesuffix("/v1") + "/admin/capacity"
    rows = httpx.get(admin, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=10).json()["data"]
    return {row["model"]: row for row in rows}


def test_capacity_view_tracks_workers_and_queue(cluster: Cluster) -> None:
    models = [
        ModelConfig(name="busy", max_concurrency=4, backend=SimulatorBackend(ttft_ms=5, tokens_per_s=1000)),
        ModelConfig(name="idle"),
    ]
    config = cluster.write_config(with_consumers(models))
    with cluster.together():
        gateway = cluster.ingress(config)
        first = cluster.worker("busy", config, "w-1")
        cluster.worker("busy", config, "w-2")
    wait_until(lambda: _view(gateway)["busy"]["workers"] == 2, 10, "workers not registered")
    busy = _view(gateway)["busy"]
    assert (busy["capacity"], busy["free_slots"], busy["queued"]) == (8, 8, 0)

    first.stop()  # a clean stop removes the worker at once
    wait_until(lambda: _view(gateway)["busy"]["workers"] == 1, 3, "stopped worker still listed")

    # A model without workers: requests wait in its queue, and the view says so.
    def waiting_call() -> None:
        httpx.post(
            f"{gateway}/chat/completions",
            headers={"Authorization": f"Bearer {TEST_KEY}", "x-modelbus-timeout": "4"},
            json={"model": "idle", "messages": [{"role": "user", "content": "x"}]},
            timeout=30,
        )

    callers = [threading.Thread(target=waiting_call) for _ in range(3)]
    for caller in callers:
        caller.start()
    wait_until(lambda: _view(gateway)["idle"]["queued"] == 3, 5, "queue depth not visible")
    idle = _view(gateway)["idle"]
    assert idle["workers"] == 0 and idle["estimated_wait_s"] is None
    for caller in callers:
        caller.join(30)

    cli = subprocess.run(
        [sys.executable, "-m", "modelbus.cli", "capacity", "--json"],
        env=cluster.env(config),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert cli.returncode == 0, cli.stderr
    rows = {row["model"]: row for row in json.loads(cli.stdout)}
    assert rows["busy"]["workers"] == 1 and rows["idle"]["workers"] == 0
