"""Gateway-added latency and throughput: the same zero-latency backend called directly and through Modelbus.

Starts its own nats-server (from the wheel), a zero-latency simulator, one worker and one ingress, then
drives both paths with a minimal keep-alive HTTP/1.1 client (raw asyncio, one connection per virtual
user) so that the client's own cost stays small and equal on both paths.

    python bench/overhead.py                 # full run, about 5 minutes
    python bench/overhead.py --quick         # smoke run, under a minute
    python bench/overhead.py --json out.json # also write the figures as JSON
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.http_client import Connection
from dispatcher.config.config_file import dump_config
from dispatcher.policy.api_keys import hash_key
from modelbus.embedded_nats import free_port, nats_server_binary, single_server
from schemas.config import ApiKey, ConsumerConfig, ModelbusConfig, ModelConfig, OpenAIBackend
from schemas.envelope import Endpoint

KEY = "mb-bench-key-000000000000000000000000000000"
CHAT = {"model": "bench", "messages": [{"role": "user", "content": "Say something short."}], "max_tokens": 16}
EMBED = {"model": "bench-embed", "input": "The quick brown fox jumps over the lazy dog"}


@dataclass
class Endpoints:
    direct: tuple[str, int]
    gateway: tuple[str, int]


@contextmanager
def stack(workdir: Path) -> Iterator[Endpoints]:
    """nats-server, simulator, worker and ingress as child processes; all stopped on exit."""
    nats = single_server(workdir / "nats")
    nats.start()
    procs: list[subprocess.Popen[bytes]] = []
    cli = [sys.executable, "-m", "modelbus.cli"]

    def spawn(args: list[str], env: dict[str, str], name: str) -> None:
        with open(workdir / f"{name}.log", "wb") as log:
            procs.append(subprocess.Popen([*cli, *args], env=env, stdout=log, stderr=subprocess.STDOUT))

    try:
        sim_port = free_port()
        spawn(
            [
                "simulator",
                "--port",
                str(sim_port),
                "--ttft-ms",
                "0",
                "--tokens-per-s",
                "1e9",
                "--embedding-latency-ms",
                "0",
                "--capacity",
                "1000",
                "--default-max-tokens",
                "16",
            ],
            dict(os.environ),
            "simulator",
        )
        backend = OpenAIBackend(base_url=f"http://127.0.0.1:{sim_port}/v1", served_model="simulated")
        config = ModelbusConfig(
            models=[
                ModelConfig(name="bench", backend=backend, max_concurrency=256),
                ModelConfig(
                    name="bench-embed", endpoints=[Endpoint.EMBEDDINGS], backend=backend, max_concurrency=256
                ),
            ],
            consumers=[
                ConsumerConfig(name="bench", roles=["user"], keys=[ApiKey(id="bench", hash=hash_key(KEY))])
            ],
        )
        config_path = workdir / "config.yaml"
        config_path.write_text(dump_config(config))
        env = {
            **os.environ,
            "MODELBUS_NATS_URL": nats.url,
            "MODELBUS_CONFIG": str(config_path),
            "MODELBUS_NAMESPACE": "bench",
        }
        spawn(["worker", "--model", "bench", "--log-level", "warning"], env, "worker")
        spawn(["worker", "--model", "bench-embed", "--log-level", "warning"], env, "worker-embed")
        ingress_port = free_port()
        spawn(["ingress", "--port", str(ingress_port), "--log-level", "warning"], env, "ingress")
        _wait_ok(f"http://127.0.0.1:{sim_port}/health")
        _wait_ok(f"http://127.0.0.1:{ingress_port}/readyz")
        time.sleep(1.0)  # let the workers' first pull requests reach the server
        yield Endpoints(("127.0.0.1", sim_port), ("127.0.0.1", ingress_port))
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        nats.stop()


def _wait_ok(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(url)


# --- load --------------------------------------------------------------------------------------


async def closed_loop(
    address: tuple[str, int], path: str, body: dict[str, object], concurrency: int, total: int, stream: bool
) -> tuple[list[float], float]:
    """`concurrency` users each send requests back to back until `total` are done.

    Returns per-request latencies (to the last byte, or to the first token when streaming) in ms
    and the wall time in seconds.
    """
    payload = json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    remaining = total
    latencies: list[float] = []

    async def user() -> None:
        nonlocal remaining
        conn = await Connection.open(*address)
        try:
            while remaining > 0:
                remaining -= 1
                started = time.perf_counter()
                if stream:
                    first = await conn.stream_first_token(path, payload, headers)
                    latencies.append((first - started) * 1000)
                else:
                    status, _ = await conn.request(path, payload, headers)
                    if status != 200:
                        raise RuntimeError(f"HTTP {status}")
                    latencies.append((time.perf_counter() - started) * 1000)
        finally:
            conn.close()

    began = time.perf_counter()
    await asyncio.gather(*(user() for _ in range(concurrency)))
    return latencies, time.perf_counter() - began


async def relay_rate(address: tuple[str, int], path: str, streams: int, tokens: int) -> float:
    """Tokens per second received by the client over `streams` concurrent long streams."""
    body = json.dumps({**CHAT, "max_tokens": tokens, "stream": True}).encode()
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}

    async def one() -> int:
        conn = await Connection.open(*address)
        try:
            return await conn.stream_count_events(path, body, headers)
        finally:
            conn.close()

    began = time.perf_counter()
    counts = await asyncio.gather(*(one() for _ in range(streams)))
    return sum(counts) / (time.perf_counter() - began)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def summarize(direct: list[float], gateway: list[float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for q in (50, 95, 99):
        d, g = pct(direct, q), pct(gateway, q)
        out[f"direct_p{q}"], out[f"gateway_p{q}"], out[f"added_p{q}"] = d, g, g - d
    out["direct_mean"], out["gateway_mean"] = statistics.fmean(direct), statistics.fmean(gateway)
    return out


async def run(endpoints: Endpoints, quick: bool) -> dict[str, object]:
    results: dict[str, object] = {}
    scenarios = [
        ("chat", "/v1/chat/completions", CHAT, False),
        ("chat_stream_ttft", "/v1/chat/completions", {**CHAT, "stream": True}, True),
        ("embeddings", "/v1/embeddings", EMBED, False),
    ]
    for name, path, body, stream in scenarios:
        for concurrency in (1, 16, 64):
            total = (300 if quick else 2000) if concurrency == 1 else (1000 if quick else 6000)
            warm = min(200, total // 5)
            row: dict[str, float] = {}
            samples: dict[str, list[float]] = {}
            for label, address in (("direct", endpoints.direct), ("gateway", endpoints.gateway)):
                await closed_loop(address, path, body, concurrency, warm, stream)
                latencies, wall = await closed_loop(address, path, body, concurrency, total, stream)
                samples[label] = latencies
                row[f"{label}_rps"] = total / wall
            row.update(summarize(samples["direct"], samples["gateway"]))
            results[f"{name}@{concurrency}"] = row
            print(
                f"{name:18} c={concurrency:<3} "
                + "  ".join(
                    f"{k}={v:.2f}"
                    for k, v in row.items()
                    if k.startswith(("added", "direct_p50", "gateway_p50", "direct_rps", "gateway_rps"))
                ),
                flush=True,
            )
    tokens = 5000 if quick else 20000
    for streams in (1, 4):
        direct = await relay_rate(endpoints.direct, "/v1/chat/completions", streams, tokens)
        gateway = await relay_rate(endpoints.gateway, "/v1/chat/completions", streams, tokens)
        results[f"relay_tokens_per_s@{streams}"] = {"direct": direct, "gateway": gateway}
        print(f"relay tokens/s streams={streams}: direct={direct:,.0f} gateway={gateway:,.0f}", flush=True)
    return results


def machine() -> dict[str, str]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    version = subprocess.run(
        [str(nats_server_binary()), "--version"], check=False, capture_output=True, text=True
    ).stdout
    return {
        "cpus": str(os.cpu_count()),
        "cpu": cpu,
        "python": platform.python_version(),
        "nats_server": version.strip(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    info = machine()
    print(json.dumps(info), flush=True)
    with tempfile.TemporaryDirectory() as tmp, stack(Path(tmp)) as endpoints:
        results = asyncio.run(run(endpoints, args.quick))
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "results": results}, indent=2))


if __name__ == "__main__":
    main()
