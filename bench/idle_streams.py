"""Many concurrent, mostly idle SSE streams on ONE ingress: its memory and CPU, and no errors.

A stream a client holds open while a model thinks slowly is the common case for an LLM gateway
(agents, long generations, reasoning models). The stack runs as `modelbus up` runs it (dispatcher
with the audit sink into Postgres, workers, one ingress, nats-server), with one simulated model
that sends a token every `--token-interval` seconds. The client opens `--streams` streams at a
bounded rate, holds them all open for `--hold` seconds, and then lets every one finish; each must
end with `data: [DONE]` and carry every token.

    python -m bench.idle_streams --streams 10000          # ~4 minutes here
    python -m bench.idle_streams --streams 1000 --hold 10 # a quick look

Reported: the ingress's RSS before and with every stream open (and per stream), its CPU while the
streams idle, and the same for the workers, the dispatcher and nats-server; the result goes to
bench/results/idle_streams.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from bench.cpu import CpuUsage
from bench.machine import machine_facts
from bench.stack import start_deployed
from dispatcher.policy.api_keys import hash_key, new_key
from schemas.config import ApiKey, ConsumerConfig, ModelbusConfig, ModelConfig, SimulatorBackend

RESULTS = Path(__file__).with_name("results") / "idle_streams.json"
_SLOTS_PER_WORKER = 4096  # ModelConfig.max_concurrency's upper bound


@dataclass
class Tally:
    opened: int = 0  # first SSE event received
    done: int = 0  # ended with [DONE] and every token
    errors: dict[str, int] = field(default_factory=dict)

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


def bench_config(key: str, streams: int, tokens: int, interval_s: float) -> ModelbusConfig:
    workers = -(-streams // _SLOTS_PER_WORKER)
    slots = -(-streams // workers)
    return ModelbusConfig(
        models=[
            ModelConfig(
                name="idle",
                backend=SimulatorBackend(
                    ttft_ms=50, tokens_per_s=1 / interval_s, default_max_tokens=tokens, capacity=slots
                ),
                max_concurrency=slots,
                workers=workers,
            )
        ],
        consumers=[
            ConsumerConfig(name="bench", roles=["user"], keys=[ApiKey(id="bench", hash=hash_key(key))])
        ],
    )


def rss_mib(pids: list[int]) -> float:
    """Resident memory of processes still alive, from /proc."""
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        total += next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return total / 1024


async def one_stream(session: aiohttp.ClientSession, url: str, tokens: int, tally: Tally) -> None:
    body = {
        "model": "idle",
        "stream": True,
        "max_tokens": tokens,
        "messages": [{"role": "user", "content": "hi"}],
    }
    try:
        async with session.post(url, json=body) as response:
            if response.status != 200:
                tally.error(f"http {response.status}")
                return
            seen_first = False
            chunks = 0
            async for raw in response.content:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                if not seen_first:
                    seen_first = True
                    tally.opened += 1
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    if chunks >= tokens:
                        tally.done += 1
                    else:
                        tally.error("short stream")
                    return
                event = json.loads(payload)
                if "error" in event:
                    tally.error(f"error event {event['error'].get('code')}")
                    return
                if event.get("choices") and event["choices"][0]["delta"].get("content"):
                    chunks += 1
            tally.error("ended without [DONE]")
    except (TimeoutError, aiohttp.ClientError) as exc:
        tally.error(type(exc).__name__)


async def drive(base: str, key: str, streams: int, rate: float, tokens: int, tally: Tally) -> None:
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers) as session:
        tasks = []
        for _ in range(streams):
            tasks.append(
                asyncio.create_task(one_stream(session, f"{base}/v1/chat/completions", tokens, tally))
            )
            await asyncio.sleep(1 / rate)
        await asyncio.gather(*tasks)


async def wait_open(tally: Tally, streams: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if tally.opened + sum(tally.errors.values()) >= streams:
            return tally.opened == streams
        await asyncio.sleep(0.5)
    return False


async def run(
    args: argparse.Namespace, port: int, watch: dict[str, list[int]], key: str
) -> dict[str, object]:
    """`watch`: the stack's processes by group (Deployed.pids(), taken before the loop runs)."""
    base = f"http://127.0.0.1:{port}"
    ingress = watch["ingress"]
    rss_idle = rss_mib(ingress)
    tally = Tally()
    # Streams last long enough to be held open for --hold seconds after the last one opened.
    ramp_s = args.streams / args.rate
    tokens = max(2, int((ramp_s + args.hold + 30) / args.token_interval))
    driver = asyncio.create_task(drive(base, key, args.streams, args.rate, tokens, tally))
    opened_all = await wait_open(tally, args.streams, ramp_s + 120)
    usage = CpuUsage(watch)
    t0 = time.monotonic()
    await asyncio.sleep(args.hold)
    usage.stop()
    held = time.monotonic() - t0
    rss_open = {
        name: round(rss_mib(pids), 1) for name, pids in watch.items() if not name.startswith("postgres")
    }
    await driver
    return {
        "streams": args.streams,
        "all_opened": opened_all,
        "completed": tally.done,
        "errors": tally.errors,
        "hold_s": round(held, 1),
        "token_interval_s": args.token_interval,
        "tokens_per_stream": tokens,
        "ingress_rss_mib_idle": round(rss_idle, 1),
        "ingress_rss_mib_open": rss_open["ingress"],
        "ingress_kib_per_stream": round((rss_open["ingress"] - rss_idle) * 1024 / args.streams, 1),
        "cpu_percent_while_open": {
            name: round(100 * used / held, 1) for name, used in usage.by_process.items()
        },
        "other_jobs_cpu_percent": round(100 * usage.foreign / held, 1),
        "rss_mib_while_open": rss_open,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=500.0, help="streams opened per second")
    parser.add_argument("--hold", type=float, default=30.0, help="seconds every stream stays open")
    parser.add_argument("--token-interval", type=float, default=10.0, help="seconds between tokens")
    parser.add_argument("--data-dir", help="keep the stack's data and logs here (default: a temporary dir)")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.streams + 1024
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(need, soft), hard), hard))
    key = new_key()
    # Read by the stack's processes (modelbus/stack.py passes the environment on).
    os.environ["MODELBUS_MAX_CONNECTIONS"] = str(args.streams + 1000)
    os.environ["MODELBUS_MAX_ACK_PENDING"] = str(args.streams + 1000)
    os.environ["MODELBUS_LOG_LEVEL"] = "WARNING"
    os.environ.pop("MODELBUS_NATS_URL", None)
    with tempfile.TemporaryDirectory(prefix="mb-idle-") as scratch:
        workdir = Path(args.data_dir or scratch)
        deployed = start_deployed(workdir, bench_config(key, args.streams, 1, args.token_interval))
        try:
            time.sleep(3)  # workers register their capacity
            result = asyncio.run(run(args, deployed.port, deployed.pids(), key))
        finally:
            deployed.stop()
    result["machine"] = machine_facts(wrk=False)
    print(json.dumps(result, indent=2))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    if result["errors"] or not result["all_opened"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
