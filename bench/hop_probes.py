"""The hops of the gateway's path measured one at a time, at concurrency 1, from the load generator.

Each probe mirrors one step that a request takes through Modelbus, with the same libraries the
gateway uses (nats-py, aiohttp) against the same nats-server and simulator:

- `jetstream_publish_ack`: a JetStream publish with a `Nats-Msg-Id` until its PubAck, as the
  ingress does for every request (file storage, like the request stream);
- `publish_to_pull_delivery`: a message published to a stream until it reaches a pull request
  that was already waiting, as a request reaches an idle worker;
- `core_request_reply`: a core NATS message to a subscriber and its answer back, both ends in this
  process: two one-way hops like the worker's reply frames;
- `backend_aiohttp`: the worker's HTTP call to the simulator with aiohttp, as its adapter makes it.

A probe stream of its own is created and deleted, so the gateway's streams are not touched.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import api

from bench.loadgen import ProbePlan
from bench.stats import summarize

_STREAM = "BENCHPROBE"
_SUBJECT = "benchprobe.js"
_CONSUMER = "probe"
# About the size of a chat request envelope on the bus.
_PAYLOAD = b"x" * 700

Probe = Callable[[], Awaitable[float]]


async def _time(probe: Probe, iterations: int) -> dict[str, float]:
    for _ in range(min(200, iterations // 5)):
        await probe()  # warm-up
    return summarize([await probe() for _ in range(iterations)])


async def run_probes(
    plan: ProbePlan, host: str, headers: dict[str, str], progress: Callable[[str], None]
) -> dict[str, Any]:
    nc = await nats.connect(plan.nats_url, name="bench-probe")
    js = nc.jetstream()
    await js.add_stream(
        api.StreamConfig(
            name=_STREAM,
            subjects=[f"{_SUBJECT}.>"],
            storage=api.StorageType.FILE,
            retention=api.RetentionPolicy.LIMITS,
            max_msgs=100_000,
        )
    )
    results: dict[str, Any] = {}
    try:
        probes: dict[str, Probe] = {
            "jetstream_publish_ack": _jetstream_publish(js),
            "publish_to_pull_delivery": await _pull_delivery(nc, js),
            "core_request_reply": await _core_round_trip(nc),
        }
        async with aiohttp.ClientSession() as session:
            probes["backend_aiohttp"] = _backend_call(session, host, plan, headers)
            for name, probe in probes.items():
                results[name] = await _time(probe, plan.iterations)
                progress(
                    f"  probe {name:<26} p50 {results[name]['p50']:6.3f}  p99 {results[name]['p99']:6.3f} ms"
                )
    finally:
        await js.delete_stream(_STREAM)
        await nc.drain()
    return results


def _jetstream_publish(js: nats.js.JetStreamContext) -> Probe:
    async def probe() -> float:
        began = time.perf_counter()
        await js.publish(f"{_SUBJECT}.pub", _PAYLOAD, timeout=2.0, headers={"Nats-Msg-Id": uuid.uuid4().hex})
        return time.perf_counter() - began

    return probe


async def _pull_delivery(nc: NATS, js: nats.js.JetStreamContext) -> Probe:
    subject = f"{_SUBJECT}.pull"
    await js.add_consumer(
        _STREAM,
        api.ConsumerConfig(durable_name=_CONSUMER, filter_subject=subject, ack_policy=api.AckPolicy.NONE),
    )
    inbox = nc.new_inbox()
    arrived: list[asyncio.Future[float]] = []

    async def on_message(msg: Msg) -> None:
        if msg.headers and msg.headers.get("Status"):
            return  # a pull request's status (timeout, heartbeat), not the message
        if arrived and not arrived[-1].done():
            arrived[-1].set_result(time.perf_counter())

    await nc.subscribe(inbox, cb=on_message)
    next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{_STREAM}.{_CONSUMER}"

    async def probe() -> float:
        arrived.append(asyncio.get_running_loop().create_future())
        await nc.publish(next_subject, b'{"batch":1,"expires":5000000000}', reply=inbox)
        await nc.flush()  # the server has read the pull request before the message is published
        began = time.perf_counter()
        await nc.publish(subject, _PAYLOAD)
        delivered = await asyncio.wait_for(arrived[-1], 2.0)
        arrived.clear()
        return delivered - began

    return probe


async def _core_round_trip(nc: NATS) -> Probe:
    subject = f"benchprobe.echo.{uuid.uuid4().hex}"

    async def respond(msg: Msg) -> None:
        await msg.respond(b"")

    await nc.subscribe(subject, cb=respond)

    async def probe() -> float:
        began = time.perf_counter()
        await nc.request(subject, _PAYLOAD, timeout=2.0)
        return time.perf_counter() - began

    return probe


def _backend_call(
    session: aiohttp.ClientSession, host: str, plan: ProbePlan, headers: dict[str, str]
) -> Probe:
    url = f"http://{host}:{plan.backend_port}{plan.backend_path}"
    body = plan.backend_body.encode()
    backend_headers = {"Content-Type": headers.get("Content-Type", "application/json")}

    async def probe() -> float:
        began = time.perf_counter()
        async with session.post(url, data=body, headers=backend_headers) as response:
            await response.read()
            if response.status != 200:
                raise RuntimeError(f"backend answered {response.status}")
        return time.perf_counter() - began

    return probe
