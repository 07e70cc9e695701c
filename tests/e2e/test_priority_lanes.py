"""A flood of batch-lane work does not delay interactive requests on the same model."""

from __future__ import annotations

import asyncio
import statistics
import time

import httpx
import nats

from schemas.config import ModelConfig, SimulatorBackend
from schemas.envelope import Endpoint, Lane, RequestEnvelope
from tests.servers import TEST_KEY, Cluster, with_consumers

BACKLOG = 2000


def _flood(cluster: Cluster, count: int) -> None:
    """Queue `count` batch-lane requests straight onto the bus, as the Batch API would."""

    async def publish() -> None:
        nc = await nats.connect(cluster.nats_url)
        js = nc.jetstream()
        now = int(time.time() * 1000)
        subject = cluster.subjects.request("m", "default", Lane.BATCH)
        for start in range(0, count, 200):
            envelopes = [
                RequestEnvelope(
                    id=f"batch-{n}",
                    endpoint=Endpoint.CHAT,
                    model="m",
                    target="m",
                    lane=Lane.BATCH,
                    consumer="nightly",
                    created_ms=now,
                    deadline_ms=now + 600_000,
                    reply_to=f"{cluster.namespace}.nobody.{n}",
                    quota=None,
                    output_guard=None,
                    payload={"model": "m", "max_tokens": 2, "messages": [{"role": "user", "content": "b"}]},
                )
                for n in range(start, min(count, start + 200))
            ]
            await asyncio.gather(*(js.publish(subject, e.model_dump_json().encode()) for e in envelopes))
        await nc.close()

    asyncio.run(publish())


def test_interactive_requests_jump_a_two_thousand_request_batch_backlog(cluster: Cluster) -> None:
    model = ModelConfig(
        name="m", max_concurrency=4, backend=SimulatorBackend(ttft_ms=20, tokens_per_s=1000, capacity=4)
    )
    config = cluster.write_config(with_consumers([model]))
    gateway = cluster.ingress(config)
    _flood(cluster, BACKLOG)
    cluster.worker("m", config, "w-1")
    time.sleep(1.0)  # the worker is busy with batch work now
    waits = []
    with httpx.Client(
        base_url=gateway, headers={"Authorization": f"Bearer {TEST_KEY}"}, timeout=30
    ) as client:
        for n in range(30):
            response = client.post(
                "/chat/completions",
                json={"model": "m", "max_tokens": 2, "messages": [{"role": "user", "content": f"i{n}"}]},
            )
            assert response.status_code == 200
            waits.append(int(response.headers["x-modelbus-queue-ms"]))
    backlog_left = cluster.consumer_info("m", Lane.BATCH).num_pending
    print(
        f"\ninteractive queue wait with {BACKLOG} batch requests queued: median {statistics.median(waits)} ms, "
        f"max {max(waits)} ms; batch requests still queued afterwards: {backlog_left}"
    )
    assert backlog_left > BACKLOG / 2  # the batch was far from done ...
    assert statistics.median(waits) < 50 and max(waits) < 250  # ... yet interactive work barely waited
