"""The request runner when JetStream redelivers a request to the worker still running it (its
in-progress acks lost in a NATS outage): both deliveries run to the end and are settled (found by the
fail-over runs: the second one's bookkeeping was overwritten and its handler died with a KeyError,
leaving its message unsettled)."""

from __future__ import annotations

import asyncio
import time
import uuid

import nats

from dispatcher.bus.subjects import Subjects
from dispatcher.bus.topology import ensure_consumer, ensure_streams
from modelbus.embedded_nats import NatsServer
from schemas.config import SimulatorBackend
from schemas.envelope import Endpoint, RequestEnvelope
from tests.support.servers import small_streams
from workers.backends import build_backend
from workers.cancellations import Cancellations
from workers.runner import RequestRunner
from workers.worker_settings import WorkerSettings


async def test_two_deliveries_of_one_request_on_one_worker_both_settle(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url)
    subjects = Subjects("r" + uuid.uuid4().hex[:8])
    settings = WorkerSettings(
        nats_url=nats_server.url,
        namespace=subjects.namespace,
        worker_id="w",
        ack_wait_s=1,  # so that the redelivery below comes at once
        **small_streams(),
    )
    js = nc.jetstream()
    await ensure_streams(js, subjects, settings, nc.max_payload, msg_ttl=True)
    consumer = await ensure_consumer(js, subjects, settings, "m")
    now = int(time.time() * 1000)
    envelope = RequestEnvelope(
        id="r-" + uuid.uuid4().hex,
        endpoint=Endpoint.CHAT,
        model="m",
        target="m",
        consumer="c",
        created_ms=now,
        deadline_ms=now + 60_000,
        reply_to=subjects.reply("nobody", "x"),
        quota=None,
        output_guard=None,
        payload={"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]},
    )
    await js.publish(subjects.request("m"), envelope.model_dump_json().encode())
    sub = await js.pull_subscribe_bind(consumer, subjects.request_stream)
    [first] = await sub.fetch(1, timeout=5)
    # No in-progress ack reaches JetStream: once its ack wait runs out it hands the request out again.
    second = None
    for _ in range(5):
        try:
            [second] = await sub.fetch(1, timeout=1)
            break
        except nats.errors.TimeoutError:
            continue
    assert second is not None
    assert (first.metadata.num_delivered, second.metadata.num_delivered) == (1, 2)

    cancellations = Cancellations(nc, subjects)
    backend = build_backend(SimulatorBackend(ttft_ms=200, tokens_per_s=200), "m", 8)
    runner = RequestRunner(nc, settings, backend, cancellations)
    # As in a worker: in-progress acks keep both deliveries (a busy machine may take over the ack
    # wait of 1 s to run them) from being handed out a third time.
    keeping_alive = asyncio.create_task(runner.keep_alive())
    await asyncio.gather(runner.handle(first), runner.handle(second))  # concurrently, on one worker
    keeping_alive.cancel()
    assert runner.in_flight == 0 and runner.served == 2
    # Settled, not left to redeliver (acks are applied asynchronously: allow them a moment).
    for _ in range(40):
        info = await js.consumer_info(subjects.request_stream, consumer)
        if info.num_ack_pending == 0 and info.num_pending == 0:
            break
        await asyncio.sleep(0.05)
    assert info.num_ack_pending == 0 and info.num_pending == 0, info
    await backend.aclose()
    await nc.close()
