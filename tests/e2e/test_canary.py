"""Versions end to end: a 90/10 canary over real workers, the version named in headers."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx

from schemas.config import ModelConfig, SimulatorBackend, VersionConfig
from tests.support.servers import OTHER_KEY, TEST_KEY, Cluster, with_consumers

MSG = [{"role": "user", "content": "hello"}]
SPLIT_REQUESTS = 3000


def _many(model: str, gateway: str, count: int) -> Counter[str]:
    """`count` requests, 32 at a time; which version served each, from the response headers."""

    async def run() -> Counter[str]:
        served: Counter[str] = Counter()
        slots = asyncio.Semaphore(32)
        async with httpx.AsyncClient(
            base_url=gateway,
            headers={"Authorization": f"Bearer {TEST_KEY}"},
            timeout=60,
            limits=httpx.Limits(max_connections=32),
        ) as client:

            async def one() -> None:
                async with slots:
                    r = await client.post(
                        "/chat/completions", json={"model": model, "messages": MSG, "max_tokens": 1}
                    )
                    assert r.status_code == 200
                    served[r.headers["x-modelbus-version"]] += 1

            await asyncio.gather(*(one() for _ in range(count)))
        return served

    return asyncio.run(run())


def test_canary_split_and_stickiness_through_the_gateway(cluster: Cluster) -> None:
    fast = SimulatorBackend(ttft_ms=1, tokens_per_s=5000)
    versions = [VersionConfig(name="v1", weight=90), VersionConfig(name="v2", weight=10)]
    models = [
        ModelConfig(name="canary", backend=fast, versions=versions, max_concurrency=32),
        ModelConfig(name="sticky", backend=fast, versions=versions, sticky=True, max_concurrency=32),
    ]
    config = cluster.write_config(with_consumers(models))
    with cluster.together():
        gateway = cluster.ingress(config)
        for model in ("canary", "sticky"):
            for version in ("v1", "v2"):
                cluster.worker(model, config, f"w-{model}-{version}", version=version)

    def versions_served(model: str, key: str, count: int) -> Counter[str]:
        with httpx.Client(base_url=gateway, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
            served: Counter[str] = Counter()
            for _ in range(count):
                response = client.post(
                    "/chat/completions", json={"model": model, "messages": MSG, "max_tokens": 1}
                )
                assert response.status_code == 200
                version = response.headers["x-modelbus-version"]
                assert response.headers["x-modelbus-worker"] == f"w-{model}-{version}"
                served[version] += 1
            return served

    # 3,000 requests: the v2 share's standard deviation is 0.55 points, so ±2 points is 3.6 of them
    # (the split itself is checked over 10,000 draws in tests/unit/dispatcher/admission/test_routing.py).
    split = _many("canary", gateway, SPLIT_REQUESTS)
    assert sum(split.values()) == SPLIT_REQUESTS
    assert abs(split["v2"] / SPLIT_REQUESTS - 0.10) <= 0.02, split
    for key in (TEST_KEY, OTHER_KEY):
        assert len(versions_served("sticky", key, 30)) == 1  # each consumer stays on one version
