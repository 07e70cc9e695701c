"""Embedding requests that arrive together reach the backend as a few batched calls, results intact."""

from __future__ import annotations

import asyncio

import httpx

from schemas.config import ModelConfig, OpenAIBackend
from schemas.envelope import Endpoint
from tests.support.servers import TEST_KEY, Cluster, with_consumers


def _fire(gateway: str, model: str, texts: list[str]) -> list[httpx.Response]:
    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(
            base_url=gateway, headers={"Authorization": f"Bearer {TEST_KEY}"}, timeout=30
        ) as client:
            return await asyncio.gather(
                *(client.post("/embeddings", json={"model": model, "input": t}) for t in texts)
            )

    return asyncio.run(run())


def test_sixty_four_single_requests_become_a_few_backend_calls(cluster: Cluster) -> None:
    with cluster.together():
        batched_url, _ = cluster.simulator("--embedding-latency-ms", "20", "--capacity", "256")
        single_url, _ = cluster.simulator("--embedding-latency-ms", "20", "--capacity", "256")
        models = [
            ModelConfig(
                name="coalesced",
                endpoints=[Endpoint.EMBEDDINGS],
                max_concurrency=64,
                coalesce_ms=10,
                backend=OpenAIBackend(base_url=f"{batched_url}/v1", served_model="simulated"),
            ),
            ModelConfig(
                name="one-by-one",
                endpoints=[Endpoint.EMBEDDINGS],
                max_concurrency=64,
                backend=OpenAIBackend(base_url=f"{single_url}/v1", served_model="simulated"),
            ),
        ]
        config = cluster.write_config(with_consumers(models))
        gateway = cluster.ingress(config)
        cluster.worker("coalesced", config, "w-coalesced")
        cluster.worker("one-by-one", config, "w-single")
    texts = [f"sentence number {n}" for n in range(64)]

    coalesced = _fire(gateway, "coalesced", texts)
    single = _fire(gateway, "one-by-one", texts)
    assert all(r.status_code == 200 for r in coalesced + single)
    for text, a, b in zip(texts, coalesced, single, strict=True):
        # Each client gets exactly its own vector back, as if it had been sent alone.
        assert len(a.json()["data"]) == 1 and a.json()["data"][0]["index"] == 0
        assert a.json()["data"][0]["embedding"] == b.json()["data"][0]["embedding"], text
    batched_calls = httpx.get(f"{batched_url}/stats").json()["embedding_calls"]
    single_calls = httpx.get(f"{single_url}/stats").json()["embedding_calls"]
    assert single_calls == 64
    assert batched_calls <= 8, batched_calls
