"""Graceful degradation per consumer when a model has no live worker: fallback, queue, or fail fast."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from dispatcher.policy.api_keys import hash_key
from schemas.config import ApiKey, ConsumerConfig, ModelbusConfig, ModelConfig, SimulatorBackend
from tests.support.servers import Cluster, wait_until

MSG = [{"role": "user", "content": "hello"}]
KEYS = {
    policy: f"mb-test-{policy}-key-0123456789abcdef0123" for policy in ("fallback", "queue", "fail", "cache")
}


def _auth(policy: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[policy]}"}


def test_each_consumer_gets_its_own_degradation_when_the_model_is_down(cluster: Cluster) -> None:
    fast = SimulatorBackend(ttft_ms=2, tokens_per_s=2000)
    config = cluster.write_config(
        ModelbusConfig(
            models=[
                ModelConfig(name="big", backend=fast, fallbacks=["small"], cache=True),
                ModelConfig(name="small", backend=fast),
            ],
            consumers=[
                ConsumerConfig(
                    name=policy,
                    roles=["user"],
                    degradation=["cache", "fail"] if policy == "cache" else [policy],  # type: ignore[list-item]
                    keys=[ApiKey(id=policy, hash=hash_key(key))],
                )
                for policy, key in KEYS.items()
            ],
        )
    )
    with cluster.together():
        cluster.dispatcher(config)  # its task collector finishes queued requests
        gateway = cluster.ingress(config)
        big = cluster.worker("big", config, "w-big")
        cluster.worker("small", config, "w-small")
    with httpx.Client(base_url=gateway, timeout=30) as http:
        body = {"model": "big", "messages": MSG, "max_tokens": 2}
        wait_until(
            lambda: (
                "x-modelbus-degraded"
                not in http.post("/chat/completions", json=body, headers=_auth("fail")).headers
            ),
            10,
            "big never served normally",
        )
        healthy = http.post("/chat/completions", json=body, headers=_auth("fallback"))
        assert healthy.headers["x-modelbus-model"] == "big" and "x-modelbus-degraded" not in healthy.headers
        remembered = http.post("/chat/completions", json=body, headers=_auth("cache"))  # now in the cache

        big.stop()  # all workers of "big" gone

        wait_until(
            lambda: http.post("/chat/completions", json=body, headers=_auth("fail")).status_code == 503,
            5,
            "the ingress never noticed the model was down",
        )
        started = time.monotonic()
        failed = http.post("/chat/completions", json=body, headers=_auth("fail"))
        assert failed.status_code == 503 and time.monotonic() - started < 0.5  # fast, not at the deadline
        assert (
            failed.headers["retry-after"]
            and failed.headers["x-modelbus-degraded"] == "failed:no_live_workers"
        )
        assert failed.json()["error"]["code"] == "model_unavailable"

        fell_back = http.post("/chat/completions", json=body, headers=_auth("fallback"))
        assert fell_back.status_code == 200
        assert fell_back.headers["x-modelbus-degraded"] == "fallback:small"
        assert fell_back.headers["x-modelbus-model"] == "small" and fell_back.json()["model"] == "small"

        from_cache = http.post("/chat/completions", json=body, headers=_auth("cache"))
        assert (
            from_cache.status_code == 200
            and from_cache.headers["x-modelbus-degraded"] == "cache:no_live_workers"
        )
        assert from_cache.json() == remembered.json()
        other = {**body, "messages": [{"role": "user", "content": "never asked before"}]}
        assert (
            http.post("/chat/completions", json=other, headers=_auth("cache")).status_code == 503
        )  # then fail

        queued = http.post("/chat/completions", json=body, headers=_auth("queue"))
        assert queued.status_code == 202 and queued.headers["x-modelbus-degraded"] == "queued:no_live_workers"
        task_id = queued.json()["id"]
        assert http.get(f"/tasks/{task_id}", headers=_auth("queue")).json()["status"] == "queued"
        cluster.worker("big", config, "w-big-again")  # the model comes back
        wait_until(
            lambda: http.get(f"/tasks/{task_id}", headers=_auth("queue")).json()["status"] == "completed",
            20,
            "queued task never completed",
        )
        assert http.get(f"/tasks/{task_id}", headers=_auth("queue")).json()["worker"] == "w-big-again"


def test_a_failing_model_falls_back_for_consumers_who_want_it(cluster: Cluster) -> None:
    cluster.env_overrides["MODELBUS_MAX_DELIVER"] = "1"  # fail on the first delivery, to keep this quick
    config = cluster.write_config(
        ModelbusConfig(
            models=[
                ModelConfig(name="flaky", backend=SimulatorBackend(error_rate=1.0), fallbacks=["small"]),
                ModelConfig(name="small", backend=SimulatorBackend(ttft_ms=2)),
            ],
            consumers=[
                ConsumerConfig(
                    name=policy,
                    roles=["user"],
                    degradation=[policy],  # type: ignore[list-item]
                    keys=[ApiKey(id=policy, hash=hash_key(KEYS[policy]))],
                )
                for policy in ("fallback", "fail")
            ],
        )
    )
    with cluster.together():
        gateway = cluster.ingress(config)
        cluster.worker("flaky", config, "w-flaky")
        cluster.worker("small", config, "w-small")
    with httpx.Client(base_url=gateway, timeout=30) as http:
        body = {"model": "flaky", "messages": MSG, "max_tokens": 2}
        rescued = http.post("/chat/completions", json=body, headers=_auth("fallback"))
        assert rescued.status_code == 200, rescued.text
        assert rescued.headers["x-modelbus-degraded"] == "fallback:small"
        assert rescued.headers["x-modelbus-worker"] == "w-small"
        failed = http.post("/chat/completions", json=body, headers=_auth("fail"))
        assert failed.status_code == 503 and failed.json()["error"]["code"] == "backend_unavailable"


def test_a_queue_longer_than_the_wait_budget_fails_fast(cluster: Cluster) -> None:
    hasty = "mb-test-hasty-key-0123456789abcdef0123"
    config = ModelbusConfig(
        models=[
            ModelConfig(name="slow", max_concurrency=1, backend=SimulatorBackend(ttft_ms=300, capacity=1))
        ],
        consumers=[
            ConsumerConfig(
                name="patient", roles=["user"], keys=[ApiKey(id="patient", hash=hash_key(KEYS["queue"]))]
            ),
            ConsumerConfig(
                name="hasty",
                roles=["user"],
                degradation=["fail"],
                wait_budget_s=1.0,
                keys=[ApiKey(id="hasty", hash=hash_key(hasty))],
            ),
        ],
    )
    path = cluster.write_config(config)
    with cluster.together():
        gateway = cluster.ingress(path)
        cluster.worker("slow", path, "w-slow")
    body = {"model": "slow", "messages": MSG, "max_tokens": 1}
    with httpx.Client(base_url=gateway, timeout=60) as http:
        # The worker's service time is known once it has served something.
        assert http.post("/chat/completions", json=body, headers=_auth("queue")).status_code == 200
        backlog = ThreadPoolExecutor(max_workers=16)
        futures = [
            backlog.submit(http.post, "/chat/completions", json=body, headers=_auth("queue"))
            for _ in range(16)
        ]
        try:
            # 15 queued behind one slot of ~0.3 s: an estimated wait of seconds, over the 1 s budget.
            time.sleep(1.5)  # queue depths are refreshed once a second

            def refused() -> bool:
                # A probe the budget let through would wait its turn: give it up after half a second.
                headers = {"Authorization": f"Bearer {hasty}", "x-modelbus-timeout": "0.5"}
                answer = http.post("/chat/completions", json=body, headers=headers)
                return (
                    answer.status_code == 503
                    and answer.headers.get("x-modelbus-degraded") == "failed:wait_over_budget"
                )

            wait_until(refused, 10, "the wait budget was never applied")
            answer = http.post("/chat/completions", json=body, headers={"Authorization": f"Bearer {hasty}"})
            assert answer.json()["error"]["code"] == "model_unavailable" and answer.headers["retry-after"]
        finally:
            assert all(f.result().status_code == 200 for f in futures)  # the patient ones were all served
            backlog.shutdown()
