"""Fair share on a saturated model: one consumer's backlog does not starve another, and weights
set the served shares (measured where the work is done: the order of the workers' answers)."""

from __future__ import annotations

import asyncio
import statistics
import threading
import time

import httpx
import nats

from bench.fair_share import staged_envelope
from dispatcher.bus.reply_stream import decode_frame
from schemas.config import ModelConfig, SimulatorBackend
from schemas.envelope import Lane, RequestEnvelope
from tests.support.servers import ADMIN_KEY, OTHER_KEY, TEST_KEY, Cluster, with_consumers

# Fair share is off by default (its cost on an idle model, docs/traffic.md): these ingresses turn it on.
FAIR = {"MODELBUS_FAIR_SHARE": "true"}
BODY = {"model": "m", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}


def test_a_second_consumer_is_served_at_once_while_another_has_200_queued(cluster: Cluster) -> None:
    # 2 slots, about 90 ms a request: A's 200 take about 9 s to clear.
    model = ModelConfig(
        name="m", max_concurrency=2, backend=SimulatorBackend(ttft_ms=88, tokens_per_s=1000, capacity=2)
    )
    config = cluster.write_config(with_consumers([model]))
    with cluster.together():
        gateway = cluster.ingress(config, **FAIR)
        cluster.worker("m", config, "w-1")
    a_done: list[float] = []
    a_status: list[int] = []

    async def consumer_a() -> None:
        limits = httpx.Limits(max_connections=250)
        headers = {"Authorization": f"Bearer {TEST_KEY}"}
        async with httpx.AsyncClient(base_url=gateway, headers=headers, timeout=60, limits=limits) as c:

            async def one() -> None:
                response = await c.post("/chat/completions", json=BODY)
                a_status.append(response.status_code)
                a_done.append(time.monotonic())

            await asyncio.gather(*(one() for _ in range(200)))

    flood = threading.Thread(target=lambda: asyncio.run(consumer_a()))
    flood.start()
    try:
        time.sleep(1.0)
        root = gateway.removesuffix("/v1")
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        ops = httpx.get(f"{root}/admin/ops/data", headers=admin, timeout=10).json()["models"][0]
        metrics = httpx.get(f"{root}/metrics", timeout=10).text
        b_latency, b_queue = [], []
        with httpx.Client(
            base_url=gateway, headers={"Authorization": f"Bearer {OTHER_KEY}"}, timeout=60
        ) as c:
            for _ in range(10):
                started = time.monotonic()
                response = c.post("/chat/completions", json=BODY)
                assert response.status_code == 200
                b_latency.append(time.monotonic() - started)
                b_queue.append(int(response.headers["x-modelbus-queue-ms"]))
        a_finished_meanwhile = len(a_done)
    finally:
        flood.join(60)
    print(
        f"\nB: median latency {statistics.median(b_latency) * 1000:.0f} ms (max {max(b_latency) * 1000:.0f}),"
        f" median queue {statistics.median(b_queue)} ms; A finished {a_finished_meanwhile} of 200 meanwhile"
    )
    assert a_finished_meanwhile < 150  # A's backlog was still there the whole time ...
    assert statistics.median(b_latency) <= 0.5  # ... yet B was served within about a service time
    assert len(a_status) == 200 and set(a_status) == {200}  # and A lost nothing
    # The backlog is visible per consumer: on the ops data (what /ops and `modelbus top` show) ...
    staged = {share["consumer"]: share["queued"] for share in ops["shares"]}
    assert staged.get("tester", 0) > 100 and ops["staged"] == sum(staged.values())
    # ... and on /metrics of the ingress holding the feeder lease.
    assert 'modelbus_share_queued{consumer="tester",lane="interactive",model="m"}' in metrics
    assert 'modelbus_share_released_total{consumer="tester",lane="interactive",model="m"}' in metrics


def _stage(consumer: str, count: int, replies: str) -> list[RequestEnvelope]:
    return [staged_envelope(consumer, n, replies) for n in range(count)]


def test_weights_three_to_one_split_a_saturated_model_75_25(cluster: Cluster) -> None:
    model = ModelConfig(
        name="m", max_concurrency=4, backend=SimulatorBackend(ttft_ms=3, tokens_per_s=5000, capacity=4)
    )
    base = with_consumers([model])
    weighted = [
        c.model_copy(update={"share_weight": 3.0}) if c.name == "tester" else c for c in base.consumers
    ]
    config = cluster.write_config(base.model_copy(update={"consumers": weighted}))
    with cluster.together():
        cluster.ingress(config, **FAIR)  # runs the share feeder
        cluster.worker("m", config, "w-1")
    replies = f"{cluster.namespace}.probe"
    finished: list[str] = []

    async def run() -> None:
        nc = await nats.connect(cluster.nats_url)
        js = nc.jetstream()
        done = asyncio.Event()

        async def on_reply(msg: nats.aio.msg.Msg) -> None:
            frame, _ = decode_frame(msg.data)
            if frame.kind in ("final", "error"):
                finished.append(msg.subject.rsplit(".", 1)[-1])
                if len(finished) >= 2000:
                    done.set()

        await nc.subscribe(f"{replies}.*", cb=on_reply)
        # Both consumers saturate the model: 1,500 each, staged as an ingress stages them.
        a, b = _stage("tester", 1500, replies), _stage("other", 1500, replies)
        for start in range(0, 1500, 100):
            for envelopes in (a[start : start + 100], b[start : start + 100]):
                await asyncio.gather(
                    *(
                        js.publish(
                            cluster.subjects.share("m", "default", Lane.INTERACTIVE, e.consumer),
                            e.model_dump_json().encode(),
                            headers={"Nats-Msg-Id": e.id},
                        )
                        for e in envelopes
                    )
                )
            await nc.publish(cluster.subjects.share_bell, b"")
        await asyncio.wait_for(done.wait(), 120)
        await nc.close()

    asyncio.run(run())
    first = finished[:2000]
    share_a = sum(1 for name in first if name.startswith("tester-")) / len(first)
    print(f"\nserved shares over 2,000 requests at weights 3:1: {share_a:.1%} / {1 - share_a:.1%}")
    assert abs(share_a - 0.75) <= 0.05
    assert len(set(finished)) == len(finished)  # nothing answered twice


def test_when_the_ingress_feeding_the_shares_dies_another_takes_over_and_nothing_is_lost(
    cluster: Cluster,
) -> None:
    model = ModelConfig(
        name="m", max_concurrency=2, backend=SimulatorBackend(ttft_ms=48, tokens_per_s=1000, capacity=2)
    )
    config = cluster.write_config(with_consumers([model]))
    first = cluster.ingress(config, **FAIR)  # starts first: holds the feeder lease
    with cluster.together():
        second = cluster.ingress(config, **FAIR)
        cluster.worker("m", config, "w-1")
    statuses: list[int] = []

    async def send() -> None:
        headers = {"Authorization": f"Bearer {TEST_KEY}"}
        async with httpx.AsyncClient(base_url=second, headers=headers, timeout=60) as client:

            async def one(n: int) -> None:
                body = {**BODY, "messages": [{"role": "user", "content": f"q{n}"}]}
                statuses.append((await client.post("/chat/completions", json=body)).status_code)

            await asyncio.gather(*(one(n) for n in range(60)))

    started = time.monotonic()
    load = threading.Thread(target=lambda: asyncio.run(send()))
    load.start()
    time.sleep(0.5)
    port = first.removesuffix("/v1").rsplit(":", 1)[-1]
    cluster.proc(f"ingress-{port}").kill()  # SIGKILL: the lease is not given back
    load.join(60)
    took = time.monotonic() - started
    info = cluster.consumer_info("m")
    print(f"\n60 requests across a feeder hand-over: {took:.1f} s (without one: about 1.5 s)")
    assert statuses.count(200) == 60  # nothing lost ...
    assert info.delivered.consumer_seq == 60 and not info.num_redelivered  # ... nor run twice
