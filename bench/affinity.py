"""Prefix-cache affinity vs plain FIFO on two real llama-server workers.

    PYTHONPATH=. python -m bench.affinity [--requests 400] [--concurrency 16] [--out bench/results/affinity.json]

Two llama-servers (scripts/build-llama-server.sh, Gemma 3 270M) each behind its own worker of one
model, configured like GPUs with scarce KV memory: a few slots (`--parallel`), each keeping only
the prompt it last served (`--cache-ram 0`: no host-RAM prompt cache to fall back on). Eight
distinct long system prompts (checked to be at least 1,500 tokens with the server's /tokenize) with
short varied user turns, through the gateway's completions endpoint (the model has no chat
template), streamed; the same seeded sequence of requests with affinity off, then on, each time
against freshly started servers (cold caches). Measured: time to first token at the client,
throughput, the answers' `x-modelbus-affinity`, the prompt tokens each server actually evaluated
(its /metrics), and, sampled every 50 ms at the backends (/slots) and the bus (consumer lag):
how often a backend had no slot busy while requests waited in the queue.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from bench.affinity_prompts import PROMPTS, TURNS, system_prompt
from bench.affinity_sampler import DIRECT, Sampler, evaluated_tokens
from bench.stack import API_KEY, Processes, _cli, _http_ok, _log_says, _wait, start_nats
from dispatcher.config.config_file import dump_config
from dispatcher.policy.api_keys import hash_key
from modelbus.embedded_nats import free_port
from schemas.config import AffinityConfig, ApiKey, ConsumerConfig, ModelbusConfig, ModelConfig, OpenAIBackend
from schemas.envelope import Endpoint
from tests.support.llama_server import ALIAS, find_llama_server, gemma_model_path

_ROOT = Path(__file__).resolve().parents[1]
MODEL = "gemma"


def _llama(procs: Processes, name: str, parallel: int, ctx_per_slot: int, threads: int, batch: int) -> str:
    binary = find_llama_server()
    if binary is None:
        raise SystemExit("llama-server is not built: bash scripts/build-llama-server.sh")
    port = free_port()
    argv = [
        str(binary), "--model", str(gemma_model_path()), "--host", "127.0.0.1", "--port", str(port),
        "--parallel", str(parallel), "--ctx-size", str(ctx_per_slot * parallel), "--threads", str(threads),
        "--alias", ALIAS, "--cache-ram", "0", "--metrics", "--slots", "--batch-size", str(batch),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLAMA_ARG_")}
    procs.spawn(name, argv, env)
    _wait(lambda: _http_ok(f"http://127.0.0.1:{port}/health"), name, procs, 180)
    return f"http://127.0.0.1:{port}"


def _config(base: str, slots: int, affinity: AffinityConfig | None) -> ModelbusConfig:
    backend = OpenAIBackend(base_url=f"{base}/v1", served_model=ALIAS, read_timeout_s=600)
    model = ModelConfig(
        name=MODEL,
        endpoints=[Endpoint.COMPLETIONS],
        backend=backend,
        max_concurrency=slots,
        affinity=affinity,
    )
    key = ApiKey(id="bench", hash=hash_key(API_KEY))
    return ModelbusConfig(
        models=[model], consumers=[ConsumerConfig(name="bench", roles=["user"], keys=[key])]
    )


async def _drive(
    port: int,
    plan: list[tuple[int, str]],
    concurrency: int,
    progress: Path | None,
    mode: str,
) -> list[dict[str, Any]]:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    results: list[dict[str, Any]] = []
    todo = iter(enumerate(plan))
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}/v1", headers=headers, timeout=900, limits=limits
    ) as client:

        async def one_client() -> None:
            for index, (prompt_no, turn) in todo:
                body = {
                    "model": MODEL,
                    "prompt": f"{system_prompt(prompt_no)}\n\nUser: {turn}\nAssistant:",
                    "max_tokens": 8,
                    "temperature": 0,
                    "stream": True,
                }
                started = time.perf_counter()
                first: float | None = None
                async with client.stream("POST", "/completions", json=body) as response:
                    response.raise_for_status()
                    async for line in response.aiter_lines():
                        if first is None and line.startswith("data: {"):
                            first = time.perf_counter()
                    ended = time.perf_counter()
                results.append(
                    {
                        "at_s": time.time(),
                        "index": index,
                        "prompt": prompt_no,
                        "ttft_ms": ((first or ended) - started) * 1000,
                        "total_ms": (ended - started) * 1000,
                        "ended": ended,
                        "started": started,
                        "affinity": response.headers.get("x-modelbus-affinity"),
                        "worker": response.headers.get("x-modelbus-worker"),
                    }
                )
                if progress is not None:  # a run cut short still leaves its answers
                    with progress.with_suffix(f".{mode}.jsonl").open("a") as out:
                        out.write(json.dumps(results[-1]) + "\n")

        await asyncio.gather(*(one_client() for _ in range(concurrency)))
    return results


async def _keep_busy(
    port: int, plan: list[tuple[int, str]], concurrency: int, hold: threading.Barrier
) -> None:
    """Modes run at once so that the machine's other load falls on both alike: the mode that finishes
    first keeps its servers as busy (the same plan again, nothing recorded) until every mode is done,
    or the slower one would get a quieter machine for its last part."""
    done = asyncio.ensure_future(asyncio.to_thread(hold.wait))
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}/v1", headers=headers, timeout=900
    ) as client:

        async def one_client(offset: int) -> None:
            n = offset
            while not done.done():
                prompt_no, turn = plan[n % len(plan)]
                prompt = f"{system_prompt(prompt_no)}\n\nUser: {turn}\nAssistant:"
                body = {"model": MODEL, "prompt": prompt, "max_tokens": 8, "temperature": 0}
                await client.post("/completions", json=body)
                n += concurrency

        clients = [asyncio.ensure_future(one_client(k)) for k in range(concurrency)]
        await done
        for client_task in clients:
            client_task.cancel()
        await asyncio.gather(*clients, return_exceptions=True)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_case(
    args: argparse.Namespace,
    plan: list[tuple[int, str]],
    affinity: bool,
    hold: threading.Barrier | None = None,
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="mb-affinity-") as tmp:
        workdir = Path(tmp)
        procs = Processes(workdir)
        try:
            backends = [
                _llama(procs, f"llama-{n}", args.slots, args.ctx_per_slot, args.threads, args.batch)
                for n in range(2)
            ]
            tokens = min(
                len(_post(backends[0], "/tokenize", {"content": system_prompt(n)})["tokens"])
                for n in range(PROMPTS)
            )
            if tokens < 1500:
                raise SystemExit(f"the shortest system prompt has {tokens} tokens: the bench needs >= 1,500")
            nats_url = start_nats(workdir, procs)
            setting = (
                AffinityConfig(
                    window_chars=args.window_chars,
                    buckets=args.buckets,
                    per_bucket=args.per_bucket,
                    guest_slots=args.guest_slots,
                )
                if affinity
                else None
            )
            env = {
                **os.environ,
                "MODELBUS_NATS_URL": nats_url,
                "MODELBUS_NAMESPACE": "bench",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(_ROOT), os.environ.get("PYTHONPATH")])),
            }
            for n, base in enumerate(backends):
                path = workdir / f"worker-{n}.yaml"
                path.write_text(dump_config(_config(base, args.slots, setting)))
                worker_env = {
                    **env,
                    "MODELBUS_CONFIG": str(path),
                    "MODELBUS_WORKER_ID": f"w{n}",
                    "MODELBUS_AFFINITY_STEAL_GRACE_MS": str(args.steal_grace_ms),
                }
                procs.spawn(f"worker-{n}", _cli("worker", "--model", MODEL), worker_env)
                _wait(_log_says(procs, f"worker-{n}", "serving"), f"worker-{n}", procs)
            path = workdir / "ingress.yaml"
            path.write_text(dump_config(_config(backends[0], args.slots, setting)))
            port = free_port()
            procs.spawn(
                "ingress", _cli("ingress", "--port", str(port)), {**env, "MODELBUS_CONFIG": str(path)}
            )
            _wait(lambda: _http_ok(f"http://127.0.0.1:{port}/readyz"), "ingress", procs)
            time.sleep(3)  # every worker has seen the other's heartbeat: home buckets settled
            sampler = Sampler(backends, nats_url, MODEL, args.buckets if affinity else 0)
            stop = asyncio.Event()

            async def measured() -> list[dict[str, Any]]:
                sampling = asyncio.create_task(sampler.run(stop))
                try:
                    mode = "affinity" if affinity else "fifo"
                    return await _drive(port, plan, args.concurrency, args.progress, mode)
                finally:
                    stop.set()
                    await sampling

            began = time.perf_counter()
            results = asyncio.run(measured())
            wall = max(r["ended"] for r in results) - began
            evaluated = [evaluated_tokens(b) for b in backends]
            if hold is not None:
                asyncio.run(_keep_busy(port, plan, args.concurrency, hold))
        finally:
            procs.stop_all()
    ttft = [r["ttft_ms"] for r in results]
    summary: dict[str, Any] = {
        "mode": "affinity" if affinity else "fifo",
        "requests": len(results),
        "system_prompt_tokens": tokens,
        "ttft_p50_ms": round(statistics.median(ttft), 1),
        "ttft_p90_ms": round(_percentile(ttft, 0.9), 1),
        "throughput_rps": round(len(results) / wall, 3),
        "wall_s": round(wall, 1),
        "prompt_tokens_evaluated": evaluated,
        "affinity": dict(Counter(str(r["affinity"]) for r in results)),
        "per_worker": dict(Counter(str(r["worker"]) for r in results)),
        "prompts_per_worker": {
            w: sorted({r["prompt"] for r in results if r["worker"] == w})
            for w in {r["worker"] for r in results}
        },
        **sampler.summary(args.slots),
    }
    print(json.dumps(summary), flush=True)
    return summary


def _post(base: str, path: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        base + path, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with DIRECT.open(request, timeout=60) as response:
        return json.loads(response.read())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=4, help="closed-loop clients")
    parser.add_argument("--together", action=argparse.BooleanOptionalAction, default=True)
    # One slot per home prompt (8 prompts, two workers) and one guest slot for stolen work.
    parser.add_argument("--slots", type=int, default=5, help="llama-server --parallel = worker capacity")
    parser.add_argument("--ctx-per-slot", type=int, default=2304)
    parser.add_argument("--threads", type=int, default=1, help="llama-server --threads (each)")
    # Chunked prefill, as vLLM does by default: llama-server puts every slot's work in one batch per
    # step, so with its default of 2,048 a cold 1,500-token prompt holds up the other slots' next
    # tokens for its whole prefill; 512 (its micro-batch) lets them through every 512 prompt tokens.
    parser.add_argument("--batch", type=int, default=512, help="llama-server --batch-size")
    parser.add_argument("--buckets", type=int, default=16)
    parser.add_argument("--window-chars", type=int, default=1024)
    # llama.cpp keeps one prompt per slot: a second request of a running prompt would be prefilled
    # cold in another slot. A steal costs a cold prefill and evicts one of the thief's prompts (5-40 s
    # here, against 1-3 s for a warm request): an idle worker waits about that long before taking
    # another's work (docs/traffic.md, Prefix-cache affinity; 2 s stole a third of the work here).
    parser.add_argument("--per-bucket", type=int, default=1, help="affinity.per_bucket (0: no limit)")
    parser.add_argument("--steal-grace-ms", type=float, default=10_000.0)
    # A guest slot takes stolen work at once (after a 50 ms grace for an idle home) and evicts no
    # home prompt: the steal grace above then only decides when stolen work may take a home slot.
    parser.add_argument("--guest-slots", type=int, default=1, help="affinity.guest_slots (0: none)")
    parser.add_argument("--modes", default="fifo,affinity")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--progress", type=Path, default=None, help="append each answer as a JSON line")
    args = parser.parse_args()
    args.per_bucket = args.per_bucket or None
    rng = random.Random(19)
    plan = [(rng.randrange(PROMPTS), rng.choice(TURNS)) for _ in range(args.requests)]
    modes = args.modes.split(",")
    if args.together:
        # Both modes at once, each on its own servers: a shared, noisy machine loads them alike, so
        # their ratio means something (one after the other, the load of other jobs differed).
        with ThreadPoolExecutor(len(modes)) as pool:
            hold = threading.Barrier(len(modes))
            results = list(pool.map(lambda mode: run_case(args, plan, mode == "affinity", hold), modes))
    else:
        results = [run_case(args, plan, mode == "affinity") for mode in modes]
    if args.out is not None:
        args.out.write_text(
            json.dumps(
                {
                    "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                    "results": results,
                },
                indent=2,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
