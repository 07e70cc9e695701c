"""Prefix-cache affinity through the gateway: each prompt head stays on its home worker, the choice
shows in the header, the audit row and the capacity view, and a worker leaving hands its own on."""

from __future__ import annotations

import httpx
import orjson
import pytest

from dispatcher.scheduling.affinity import request_bucket
from schemas.config import AffinityConfig, ModelConfig, SimulatorBackend
from schemas.envelope import Endpoint, Lane
from tests.support.servers import ADMIN_KEY, TEST_KEY, Cluster, sql, wait_until, with_consumers

# Three workers, an ingress and the dispatcher start one after the other on a shared 2-core machine.
pytestmark = pytest.mark.timeout(300)
AUTH = {"Authorization": f"Bearer {TEST_KEY}"}
PROMPTS = [f"You are assistant number {n}. " * 20 for n in range(24)]
WORKERS = ("w-1", "w-2", "w-3")
WINDOW, BUCKETS = 200, 16


def _bucket(system: str) -> int:
    payload = {"messages": [{"role": "system", "content": system}, {"role": "user", "content": "x"}]}
    bucket = request_bucket(Endpoint.CHAT, Lane.INTERACTIVE, payload, WINDOW, BUCKETS)
    assert bucket is not None
    return bucket


def _balanced(placed: dict[int, str], workers: tuple[str, ...]) -> bool:
    """Every worker is home to some prompts, and none to more than its bounded share of their buckets
    (the workers' map depends on the order the buckets turned active: checked by its properties)."""
    buckets = {w: {_bucket(PROMPTS[n]) for n, v in placed.items() if v == w} for w in workers}
    cap = -(-len({_bucket(p) for p in PROMPTS}) // len(workers))
    return set(placed.values()) == set(workers) and all(len(b) <= cap for b in buckets.values())


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
    model = ModelConfig(
        name="aff", backend=backend, affinity=AffinityConfig(window_chars=WINDOW, buckets=BUCKETS)
    )
    config = cluster.write_config(with_consumers([model]))
    cluster.dispatcher(config, database_url)
    gateway = cluster.ingress(config)
    # A steal grace far above any scheduling delay here: an idle home worker always wins its bucket.
    for worker in WORKERS:
        cluster.worker("aff", config, worker, MODELBUS_AFFINITY_STEAL_GRACE_MS="3000")
    wait_until(lambda: _capacity(gateway)["workers"] == 3, 10, "workers not registered")

    placed: dict[int, str] = {}

    def settled(workers: tuple[str, ...]) -> bool:
        try:
            placed.clear()
            placed.update(_placement(gateway))
        except AssertionError:
            return False  # a worker had not seen the others' heartbeats yet
        return _balanced(placed, workers)

    wait_until(lambda: settled(WORKERS), 30, "prompts never settled on balanced home workers")
    before = dict(placed)
    # Counted since the workers started, before they had all seen each other: some were stolen.
    wait_until(lambda: _capacity(gateway)["affinity_hit_rate"] is not None, 10, "no hit rate in the view")

    cluster.proc("w-2").stop()  # a clean stop deletes its registry entry at once
    wait_until(lambda: settled(("w-1", "w-3")), 30, "w-2's prompts never found their new home")
    # Only w-2's prompts moved: the others stay where their cache is (homes are sticky).
    moved = {
        n: (before[n], placed[n], _bucket(PROMPTS[n]))
        for n in before
        if before[n] != "w-2" and placed[n] != before[n]
    }
    assert not moved, (moved, before, placed)

    records = [orjson.loads(r["record"]) for r in sql(database_url, "SELECT record FROM audit_log")]
    labels = [r["affinity"] for r in records]
    assert set(labels) <= {"home", "stolen"} and labels.count("home") > len(labels) // 2
