"""Fair share vs FIFO: does the share feeder cost throughput (idle slots) or latency?

    PYTHONPATH=. python -m bench.fair_share [--out bench/results/fair_share.json]

For each service time, a model is saturated by four consumers with equal backlogs published straight
onto the bus (staged per consumer with fair share on, onto the FIFO request subject with it off),
and the answers are counted where they come out of the worker. Throughput is compared with the
ideal `slots / service time`; the difference is slot time left idle. A second part sends single
requests through the HTTP gateway one after the other (an idle model) and compares latency: the
cost per request of the extra hop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

import httpx
import nats

from bench.stack import API_KEY, Processes, _cli, _http_ok, _log_says, _wait, start_nats
from bench.stats import percentile
from dispatcher.bus.reply_stream import decode_frame
from dispatcher.bus.subjects import Subjects
from dispatcher.config.config_file import dump_config
from dispatcher.policy.api_keys import hash_key
from modelbus.embedded_nats import free_port
from schemas.config import ApiKey, ConsumerConfig, ModelbusConfig, ModelConfig, SimulatorBackend
from schemas.envelope import Endpoint, Lane, RequestEnvelope

_ROOT = Path(__file__).resolve().parents[1]
CONSUMERS = ["c0", "c1", "c2", "c3"]


def _config(slots: int, ttft_ms: float) -> ModelbusConfig:
    backend = SimulatorBackend(ttft_ms=ttft_ms, tokens_per_s=100_000, capacity=slots)
    return ModelbusConfig(
        models=[ModelConfig(name="m", max_concurrency=slots, backend=backend)],
        consumers=[
            ConsumerConfig(name="bench", roles=["user"], keys=[ApiKey(id="bench", hash=hash_key(API_KEY))])
        ],
    )


def _start(workdir: Path, procs: Processes, config: ModelbusConfig, fair: bool) -> tuple[str, int]:
    nats_url = start_nats(workdir, procs)
    path = workdir / "config.yaml"
    path.write_text(dump_config(config))
    env = {
        **os.environ,
        "MODELBUS_NATS_URL": nats_url,
        "MODELBUS_CONFIG": str(path),
        "MODELBUS_NAMESPACE": "bench",
        "MODELBUS_FAIR_SHARE": "true" if fair else "false",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(_ROOT), os.environ.get("PYTHONPATH")])),
    }
    port = free_port()
    procs.spawn("ingress", _cli("ingress", "--port", str(port)), env)
    _wait(lambda: _http_ok(f"http://127.0.0.1:{port}/readyz"), "ingress", procs)
    procs.spawn("worker", _cli("worker", "--model", "m"), env)
    _wait(_log_says(procs, "worker", "serving"), "worker", procs)
    return nats_url, port


def staged_envelope(consumer: str, n: int, replies: str) -> RequestEnvelope:
    """A request as admission would build it, answered to `<replies>.<consumer>-<n>`."""
    now = int(time.time() * 1000)
    return RequestEnvelope(
        id=f"{consumer}-{n}",
        endpoint=Endpoint.CHAT,
        model="m",
        target="m",
        consumer=consumer,
        created_ms=now,
        deadline_ms=now + 600_000,
        reply_to=f"{replies}.{consumer}-{n}",
        quota=None,
        output_guard=None,
        payload={"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]},
    )


async def _saturate(nats_url: str, fair: bool, per_consumer: int) -> dict[str, float]:
    """Queue `per_consumer` requests for each consumer, then time the answers of the middle 80%."""
    subjects = Subjects("bench")
    replies = "bench.probe"
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    total = per_consumer * len(CONSUMERS)
    done_at: list[float] = []
    finished = asyncio.Event()

    async def on_reply(msg: nats.aio.msg.Msg) -> None:
        frame, _ = decode_frame(msg.data)
        if frame.kind in ("final", "error"):
            done_at.append(time.monotonic())
            if len(done_at) >= total:
                finished.set()

    await nc.subscribe(f"{replies}.*", cb=on_reply)
    for n in range(0, per_consumer, 50):
        for consumer in CONSUMERS:
            envelopes = [staged_envelope(consumer, i, replies) for i in range(n, min(per_consumer, n + 50))]
            await asyncio.gather(
                *(
                    js.publish(
                        subjects.share("m", "default", Lane.INTERACTIVE, consumer)
                        if fair
                        else subjects.request("m", "default", Lane.INTERACTIVE),
                        e.model_dump_json().encode(),
                        headers={"Nats-Msg-Id": e.id},
                    )
                    for e in envelopes
                )
            )
        if fair:
            await nc.publish(subjects.share_bell, b"")
    await asyncio.wait_for(finished.wait(), 600)
    await nc.close()
    # The middle 80% of completions: all consumers backlogged, no ramp-up or tail.
    low, high = done_at[total // 10], done_at[total - total // 10 - 1]
    return {"requests": total, "throughput_rps": (total - 2 * (total // 10) - 1) / (high - low)}


def _idle_latency(port: int, requests: int) -> dict[str, float]:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    body = {"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]}
    samples = []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}/v1", headers=headers, timeout=30) as client:
        for n in range(requests + 20):
            started = time.perf_counter()
            response = client.post("/chat/completions", json=body)
            response.raise_for_status()
            if n >= 20:  # warm-up
                samples.append((time.perf_counter() - started) * 1000)
    return {"p50_ms": percentile(samples, 50), "p90_ms": percentile(samples, 90)}


def run_case(slots: int, ttft_ms: float, per_consumer: int, fair: bool) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="mb-fair-") as tmp:
        procs = Processes(Path(tmp))
        try:
            nats_url, port = _start(Path(tmp), procs, _config(slots, ttft_ms), fair)
            saturated = asyncio.run(_saturate(nats_url, fair, per_consumer))
            idle = _idle_latency(port, 200)
        finally:
            procs.stop_all()
    ideal = slots / (ttft_ms / 1000)
    result: dict[str, object] = {
        "mode": "fair" if fair else "fifo",
        "slots": slots,
        "service_ms": ttft_ms,
        "ideal_rps": round(ideal, 1),
        **{k: round(v, 1) for k, v in saturated.items()},
        "idle_http_p50_ms": round(idle["p50_ms"], 2),
        "idle_http_p90_ms": round(idle["p90_ms"], 2),
    }
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    results = []
    for slots, ttft_ms, per_consumer in ((2, 90.0, 60), (8, 20.0, 400), (8, 5.0, 800)):
        for fair in (False, True):
            results.append(run_case(slots, ttft_ms, per_consumer, fair))
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
