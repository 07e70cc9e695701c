"""Streams that wait a long time between tokens: kept alive by batched pulses, lost only when silent.

A worker tells each waiting ingress that its quiet requests are alive with one pulse message per
tick for all of them (workers/runner.py, dispatcher/bus/client.py), not a heartbeat frame per
request: with 10,000 open streams that is a few messages a second instead of 5,000. Here the gap
between tokens (1.5 s) is longer than the ingress's idle timeout (0.6 s), so only the pulses keep
the streams from being declared lost.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import httpx
import nats
import orjson

from dispatcher.bus.reply_stream import decode_frame
from schemas.config import ModelConfig, SimulatorBackend
from schemas.envelope import HeartbeatFrame
from tests.support.servers import TEST_KEY, Cluster, wait_until, with_consumers

AUTH = {"Authorization": f"Bearer {TEST_KEY}"}
SLOW_BUS = {"MODELBUS_HEARTBEAT_S": "0.2", "MODELBUS_IDLE_TIMEOUT_S": "0.6"}
STREAMS = 20
TOKENS = 3


def _slow_model() -> ModelConfig:
    backend = SimulatorBackend(ttft_ms=10, tokens_per_s=1 / 1.5, default_max_tokens=TOKENS, capacity=64)
    return ModelConfig(name="slow", backend=backend, max_concurrency=64)


async def _stream(client: httpx.AsyncClient) -> tuple[int, list[dict[str, object]]]:
    body = {"model": "slow", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    events: list[dict[str, object]] = []
    async with client.stream("POST", "/chat/completions", json=body) as response:
        async for line in response.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(orjson.loads(line[6:]))
            elif line == "data: [DONE]":
                events.append({"done": True})
    return response.status_code, events


def _content_chunks(events: list[dict[str, object]]) -> int:
    count = 0
    for event in events:
        choices = event.get("choices")
        if isinstance(choices, list) and choices and choices[0].get("delta", {}).get("content"):
            count += 1
    return count


def test_idle_streams_live_on_pulses_with_no_heartbeat_frames(cluster: Cluster) -> None:
    config = cluster.write_config(with_consumers([_slow_model()]))
    with cluster.together():
        gateway = cluster.ingress(config, **SLOW_BUS)
        cluster.worker("slow", config, "w-slow", **SLOW_BUS)
    pulses: list[int] = []  # requests named per pulse message
    heartbeat_frames = 0

    async def run() -> list[tuple[int, list[dict[str, object]]]]:
        nonlocal heartbeat_frames
        nc = await nats.connect(cluster.nats_url)

        async def on_reply(msg: nats.aio.msg.Msg) -> None:
            nonlocal heartbeat_frames
            if cluster.subjects.is_pulse(msg.subject):
                pulses.append(len(orjson.loads(msg.data)))
            elif isinstance(decode_frame(msg.data)[0], HeartbeatFrame):
                heartbeat_frames += 1

        await nc.subscribe(f"{cluster.namespace}.reply.*.*", cb=on_reply)
        try:
            async with httpx.AsyncClient(base_url=gateway, headers=AUTH, timeout=60) as client:
                return await asyncio.gather(*(_stream(client) for _ in range(STREAMS)))
        finally:
            await nc.close()

    results = asyncio.run(run())
    for status, events in results:
        assert status == 200
        assert not [e for e in events if "error" in e], events
        assert events[-1] == {"done": True} and _content_chunks(events) == TOKENS
    assert heartbeat_frames == 0
    # ~4.5 s of waiting at one pulse per tick (0.1 s) for all 20 streams; a heartbeat frame per
    # stream every 0.2 s would have been ~450 messages.
    assert pulses and len(pulses) < 100
    assert max(pulses) > 1  # one message named several streams


def test_a_frozen_worker_is_declared_lost_although_it_once_pulsed(cluster: Cluster) -> None:
    """Pulses must not hide a real silence: a worker stopped mid-stream fails the stream at once
    (retryable `worker_lost`), well before the model would have sent its next token."""
    config = cluster.write_config(with_consumers([_slow_model()]))
    with cluster.together():
        gateway = cluster.ingress(config, **SLOW_BUS)
        worker = cluster.worker("slow", config, "w-frozen", **SLOW_BUS)
    outcome: dict[str, object] = {}

    def consume() -> None:
        body = {"model": "slow", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        with (
            httpx.Client(base_url=gateway, headers=AUTH, timeout=30) as client,
            client.stream("POST", "/chat/completions", json=body) as response,
        ):
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    event = orjson.loads(line[6:])
                    if "error" in event:
                        outcome["error"] = event["error"]
                        outcome["at"] = time.monotonic()
                        return
                    outcome["first"] = True

    thread = threading.Thread(target=consume)
    thread.start()
    wait_until(lambda: "first" in outcome, 10, "the stream did not start")
    os.kill(worker.popen.pid, signal.SIGSTOP)
    frozen_at = time.monotonic()
    try:
        thread.join(15)
    finally:
        os.kill(worker.popen.pid, signal.SIGCONT)
    assert not thread.is_alive()
    error = outcome.get("error")
    assert isinstance(error, dict) and error.get("code") == "worker_lost", outcome
    assert float(outcome["at"]) - frozen_at < 3.0  # type: ignore[arg-type]
