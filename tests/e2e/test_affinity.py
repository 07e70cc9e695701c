"""Prefix-cache affinity through the gateway: each prompt head stays on its home worker, the choice
shows in the header, the audit row and the capacity view, and a worker leaving moves only its own."""

from __future__ import annotations

import httpx
import orjson

from schemas.config import AffinityConfig, ModelConfig, SimulatorBackend
from tests.servers import ADMIN_KEY, TEST_KEY, Cluster, sql, wait_until, with_consumers

AUTH = {"Authorization": f"Bearer {TEST_KEY}"}
PROMPTS = [f"You are assistant number {n}. " * 20 for n in range(12)]
WORKERS = ("w-1", "w-2", "w-3")


def _ask(gateway: str, system: str, turn: str) -> httpx.Response:
    body = {
        "model": "aff",
        "max_tokens": 4,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": turn}],
    }
    response = httpx.post(f"{gateway}/chat/completions", headers=AUTH, json=body, timeout=30)
    response.raise_for_status()
    return response


def _placement(gateway: str) -> dict[int, str]:
    """Which worker served each prompt; every prompt asked twice (sequentially: workers are idle)."""
    placed: dict[int, str] = {}
    for n, system in enumerate(PROMPTS):
        answers = [_ask(gateway, system, turn) for turn in ("hello", "and then?")]
        workers = {a.headers["x-modelbus-worker"] for a in answers}
        assert len(workers) == 1, f"prompt {n} served by {workers}"
        assert {a.headers["x-modelbus-affinity"] for a in answers} == {"home"}
        placed[n] = workers.pop()
    return placed


def _capacity(gateway: str) -> dict[str, object]:
    admin = gateway.removesuffix("/v1") + "/admin/capacity"
    rows = httpx.get(admin, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=10).json()["data"]
    return next(row for row in rows if row["model"] == "aff")


def test_prompts_stay_home_and_a_leaving_worker_moves_only_its_own(
    cluster: Cluster, database_url: str
) -> None:
    cluster.env_overrides["MODELBUS_DATABASE_URL"] = database_url
    backend = SimulatorBackend(ttft_ms=2, tokens_per_s=5000)
    model = ModelConfig(name="aff", backend=backend, affinity=AffinityConfig(window_chars=200, buckets=16))
    config = cluster.write_config(with_consumers([model]))
    cluster.dispatcher(config, database_url)
    gateway = cluster.ingress(config)
    # A steal grace far above any scheduling delay here: an idle home worker always wins its bucket.
    for worker in WORKERS:
        cluster.worker("aff", config, worker, MODELBUS_AFFINITY_STEAL_GRACE_MS="3000")
    wait_until(lambda: _capacity(gateway)["workers"] == 3, 10, "workers not registered")

    def settled() -> bool:
        try:
            return len(set(_placement(gateway).values())) == 3
        except AssertionError:
            return False  # a worker had not seen the others' heartbeats yet

    wait_until(settled, 15, "prompts never settled on three home workers")
    before = _placement(gateway)
    wait_until(lambda: _capacity(gateway)["affinity_hit_rate"] is not None, 10, "no hit rate in the view")

    cluster.proc("w-2").stop()  # a clean stop deletes its registry entry at once
    wait_until(lambda: _capacity(gateway)["workers"] == 2, 10, "stopped worker still listed")

    def moved() -> bool:
        try:
            return "w-2" not in _placement(gateway).values()
        except AssertionError:
            return False

    wait_until(moved, 15, "w-2's prompts never found a new home")
    after = _placement(gateway)
    assert all(after[n] == before[n] for n in before if before[n] != "w-2")  # the rest stayed put
    assert any(before[n] == "w-2" for n in before)

    wait_until(
        lambda: len(sql(database_url, "SELECT 1 FROM audit_log")) >= 4 * len(PROMPTS),
        20,
        "audit rows missing",
    )
    records = [orjson.loads(r["record"]) for r in sql(database_url, "SELECT record FROM audit_log")]
    assert {r["affinity"] for r in records} == {"home"}
