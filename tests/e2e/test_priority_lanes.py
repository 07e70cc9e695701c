"""Priority lanes: a flood of batch-lane work does not delay interactive requests on the same model,
no batch work is taken while interactive work is queued, and a consumer configured for the batch lane
is queued there."""

from __future__ import annotations

import asyncio
import statistics
import threading
import time

import httpx
import nats

from dispatcher.policy.api_keys import hash_key
from schemas.config import ApiKey, ConsumerConfig, ModelConfig, SimulatorBackend
from schemas.envelope import Endpoint, Lane, RequestEnvelope
from tests.support.servers import TEST_KEY, Cluster, wait_until, with_consumers

BACKLOG = 2000
NIGHTLY = "mb-test-nightly-0123456789abcdef0123456789"


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


def _batch_delivered(cluster: Cluster) -> int:
    return int(cluster.consumer_info("m", Lane.BATCH).delivered.consumer_seq)


def test_no_batch_work_is_taken_while_interactive_work_fills_every_slot(cluster: Cluster) -> None:
    model = ModelConfig(
        name="m", max_concurrency=2, backend=SimulatorBackend(ttft_ms=40, tokens_per_s=1000, capacity=2)
    )
    config = cluster.write_config(with_consumers([model]))
    with cluster.together():
        gateway = cluster.ingress(config)
        cluster.worker("m", config, "w-1")
    running = threading.Event()
    running.set()
    served: list[int] = []

    def interactive() -> None:
        with httpx.Client(base_url=gateway, headers={"Authorization": f"Bearer {TEST_KEY}"}, timeout=30) as c:
            while running.is_set():
                body = {"model": "m", "max_tokens": 2, "messages": [{"role": "user", "content": "i"}]}
                served.append(c.post("/chat/completions", json=body).status_code)

    # Four clients per slot keep interactive requests queued the whole time.
    clients = [threading.Thread(target=interactive) for _ in range(8)]
    for thread in clients:
        thread.start()
    try:
        time.sleep(1.0)
        _flood(cluster, 50)
        before = _batch_delivered(cluster)
        time.sleep(3.0)
        during = _batch_delivered(cluster) - before
    finally:
        running.clear()
        for thread in clients:
            thread.join(30)
    assert served and set(served) == {200}
    assert during == 0, f"{during} batch requests were taken while interactive work was queued"
    # Once interactive work stops, the idle slots go to the batch lane.
    wait_until(lambda: _batch_delivered(cluster) > before, 10, "the batch lane never ran")


def test_a_consumer_on_the_batch_lane_is_queued_there_through_the_ingress(cluster: Cluster) -> None:
    config = with_consumers([ModelConfig(name="m", backend=SimulatorBackend(ttft_ms=1))])
    config.consumers.append(
        ConsumerConfig(
            name="nightly",
            roles=["user"],
            lane=Lane.BATCH,
            keys=[ApiKey(id="nightly", hash=hash_key(NIGHTLY))],
        )
    )
    path = cluster.write_config(config)
    gateway = cluster.ingress(path)
    result: list[httpx.Response] = []
    body = {"model": "m", "max_tokens": 2, "messages": [{"role": "user", "content": "later"}]}
    sender = threading.Thread(
        target=lambda: result.append(
            httpx.post(
                f"{gateway}/chat/completions",
                json=body,
                headers={"Authorization": f"Bearer {NIGHTLY}"},
                timeout=30,
            )
        )
    )
    sender.start()
    # No worker yet: the request waits in the batch lane's queue, not the interactive one.
    wait_until(
        lambda: cluster.consumer_info("m", Lane.BATCH).num_pending == 1, 10, "not queued on the batch lane"
    )
    assert cluster.consumer_info("m", Lane.INTERACTIVE).num_pending == 0
    cluster.worker("m", path, "w-1")
    sender.join(30)
    assert result and result[0].status_code == 200
    assert cluster.consumer_info("m", Lane.BATCH).delivered.consumer_seq == 1
