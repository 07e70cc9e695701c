"""Embedding coalescing with a real CPU model: all-MiniLM-L6-v2 behind a Modelbus worker.

Starts its own nats-server, the real embedding server (bench/embedding_server.py, one backend call
at a time), two workers and one ingress, then measures texts/s for:

    (a) backend alone, sequential calls with batches of 32 texts
    (b) backend alone, 64 concurrent clients, one text per call
    (c) gateway, 64 concurrent clients, one text per request, model with coalescing (10 ms, <= 64)
    (d) gateway, 64 concurrent clients, one text per request, model without coalescing

The acceptance target is (c) >= 80% of (a).

    python bench/coalescing.py                    # about 2 minutes: 4 interleaved rounds of 4 s each
    python bench/coalescing.py --duration 5       # shorter run
    python bench/coalescing.py --json out.json    # also write the figures as JSON
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
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

from bench.loadgen import LoadRun, Plan, run_loadgen
from bench.stack import API_KEY, Processes, _cli, _http_ok, _log_says, _wait, importable_here, start_nats
from bench.stats import percentile
from dispatcher.config.config_file import dump_config
from dispatcher.policy.api_keys import hash_key
from modelbus.embedded_nats import free_port, nats_server_binary
from schemas.config import ApiKey, ConsumerConfig, ModelbusConfig, ModelConfig, OpenAIBackend
from schemas.envelope import Endpoint

HEADERS = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
COALESCED, SINGLE = "minilm-coalesced", "minilm-single"
CONCURRENCY = 64
BATCH = 32
TARGET = 0.80

# --- realistic, varied English sentences of 10-20 words -------------------------------------------

_SUBJECTS = [
    "The new customer support team",
    "Our quarterly financial report",
    "A small group of volunteers",
    "The city council",
    "Most of the engineers on the project",
    "The delivery driver",
    "An experienced software developer",
    "The hospital's emergency department",
    "My neighbour's teenage son",
    "The marketing department",
    "A local bakery near the station",
    "The university research lab",
    "Several passengers on the late train",
    "The head chef",
    "Our cloud infrastructure provider",
    "The museum's new curator",
    "A group of high school students",
    "The warehouse manager",
]
_VERBS = [
    "announced",
    "quietly postponed",
    "carefully reviewed",
    "struggled to finish",
    "celebrated",
    "complained about",
    "decided to cancel",
    "successfully completed",
    "questioned the cost of",
    "spent the whole afternoon discussing",
    "finally approved",
    "published a detailed summary of",
]
_OBJECTS = [
    "the plan to renovate the old library",
    "a proposal for cheaper public transport",
    "the migration of every database to the new cluster",
    "the annual charity football match",
    "a recipe for sourdough bread with walnuts",
    "the results of the customer satisfaction survey",
    "the long delayed software release",
    "a new policy on working from home",
    "the schedule for next month's training sessions",
    "the contract with the cleaning company",
    "an exhibition of early twentieth century photographs",
    "the safety inspection of the factory floor",
]
_TAILS = [
    "before the end of the week",
    "after a long and heated meeting",
    "despite the heavy rain outside",
    "because the budget was much smaller than expected",
    "without telling anyone in advance",
    "on Tuesday morning",
    "in front of a surprisingly large audience",
    "for the second time this year",
    "while most of the staff were on holiday",
    "after receiving dozens of complaints from residents",
    "",
    "",
]


def sentences(count: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < count:
        text = " ".join(
            part
            for part in (rng.choice(_SUBJECTS), rng.choice(_VERBS), rng.choice(_OBJECTS), rng.choice(_TAILS))
            if part
        )
        if 10 <= len(text.split()) <= 20:
            out.append(text + ".")
    return out


# --- processes -----------------------------------------------------------------------------------


@dataclass
class Endpoints:
    backend: int  # ports on 127.0.0.1
    gateway: int


@contextmanager
def stack(workdir: Path, procs: Processes) -> Iterator[Endpoints]:
    """nats-server, embedding server, two workers and an ingress as child processes; all stopped on exit."""
    try:
        nats_url = start_nats(workdir, procs)
        emb_port = free_port()
        procs.spawn(
            "embedding-server",
            [sys.executable, str(Path(__file__).with_name("embedding_server.py")), "--port", str(emb_port)],
            {**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        backend = OpenAIBackend(base_url=f"http://127.0.0.1:{emb_port}/v1", served_model="minilm")
        config = ModelbusConfig(
            models=[
                ModelConfig(
                    name=COALESCED,
                    endpoints=[Endpoint.EMBEDDINGS],
                    backend=backend,
                    max_concurrency=CONCURRENCY,
                    coalesce_ms=10,
                    coalesce_max_inputs=64,
                ),
                ModelConfig(
                    name=SINGLE, endpoints=[Endpoint.EMBEDDINGS], backend=backend, max_concurrency=CONCURRENCY
                ),
            ],
            consumers=[
                ConsumerConfig(
                    name="bench", roles=["user"], keys=[ApiKey(id="bench", hash=hash_key(API_KEY))]
                )
            ],
        )
        config_path = workdir / "config.yaml"
        config_path.write_text(dump_config(config))
        importable_here()
        env = {
            **os.environ,
            "MODELBUS_NATS_URL": nats_url,
            "MODELBUS_CONFIG": str(config_path),
            "MODELBUS_NAMESPACE": "bench-coalescing",
        }
        for name, model in (("worker-coalesced", COALESCED), ("worker-single", SINGLE)):
            procs.spawn(name, _cli("worker", "--model", model), env)  # logs "serving" at info
        ingress_port = free_port()
        procs.spawn("ingress", _cli("ingress", "--port", str(ingress_port), "--log-level", "warning"), env)
        _wait(lambda: _http_ok(f"http://127.0.0.1:{emb_port}/health"), "embedding server", procs, 120)
        _wait(lambda: _http_ok(f"http://127.0.0.1:{ingress_port}/readyz"), "ingress", procs)
        for name in ("worker-coalesced", "worker-single"):
            _wait(_log_says(procs, name, "serving"), name, procs)
        yield Endpoints(emb_port, ingress_port)
    finally:
        procs.stop_all()


def backend_stats(endpoints: Endpoints) -> dict[str, int]:
    return dict(httpx.get(f"http://127.0.0.1:{endpoints.backend}/stats", timeout=5).json())


# --- load ----------------------------------------------------------------------------------------


@dataclass
class Result:
    texts_per_s: float
    requests: int
    texts: int
    seconds: float
    p50_ms: float
    p99_ms: float
    backend_calls: int = 0
    mean_batch: float = 0.0


def bodies(model: str, pool: list[str], per_request: int) -> list[str]:
    """4,096 different requests, sent in turn: the texts vary as real traffic does."""
    return [
        json.dumps(
            {
                "model": model,
                "input": pool[i % len(pool)]
                if per_request == 1
                else [pool[(i + k) % len(pool)] for k in range(per_request)],
            }
        )
        for i in range(4096)
    ]


def measure(
    endpoints: Endpoints,
    procs: Processes,
    label: str,
    port: int,
    model: str,
    per_request: int,
    users: int,
    pool: list[str],
    seconds: float,
    warmup: float,
) -> Result:
    """`users` clients each send requests of `per_request` texts back to back for `seconds`."""
    requests = bodies(model, pool, per_request)

    def run(key: str, duration: float) -> LoadRun:
        return LoadRun(
            key, port, "POST", "/v1/embeddings", requests[0], users, 0, 0, seconds=duration, bodies=requests
        )

    # The warm-up is a run of its own, so the backend's counters can be read after it.
    run_loadgen(Plan("127.0.0.1", HEADERS, {}, [run(f"warmup:{label}", warmup)]), procs)
    before = backend_stats(endpoints)
    load = run_loadgen(Plan("127.0.0.1", HEADERS, {}, [run(label, seconds)]), procs)["loads"][label]
    after = backend_stats(endpoints)
    calls = after["calls"] - before["calls"]
    result = Result(
        texts_per_s=load["requests"] * per_request / load["wall_s"],
        requests=load["requests"],
        texts=load["requests"] * per_request,
        seconds=load["wall_s"],
        p50_ms=load["latency_ms"]["p50"],
        p99_ms=load["latency_ms"]["p99"],
        backend_calls=calls,
        mean_batch=(after["texts"] - before["texts"]) / calls if calls else 0.0,
    )
    print(
        f"{label:52} {result.texts_per_s:8.1f} texts/s  p50={result.p50_ms:7.1f} ms  p99={result.p99_ms:7.1f} ms"
        f"  backend calls={result.backend_calls} (mean batch {result.mean_batch:.1f})",
        flush=True,
    )
    return result


SCENARIOS = {
    "a": (f"(a) backend, sequential batches of {BATCH}", "backend", "minilm", BATCH, 1),
    "b": (f"(b) backend, {CONCURRENCY} clients x 1 text", "backend", "minilm", 1, CONCURRENCY),
    "c": (f"(c) gateway, coalescing, {CONCURRENCY} clients x 1 text", "gateway", COALESCED, 1, CONCURRENCY),
    "d": (f"(d) gateway, no coalescing, {CONCURRENCY} clients x 1 text", "gateway", SINGLE, 1, CONCURRENCY),
}


def _combine(parts: list[Result]) -> Result:
    seconds = sum(p.seconds for p in parts)
    texts = sum(p.texts for p in parts)
    calls = sum(p.backend_calls for p in parts)
    return Result(
        texts_per_s=texts / seconds,
        requests=sum(p.requests for p in parts),
        texts=texts,
        seconds=seconds,
        p50_ms=percentile([p.p50_ms for p in parts], 50),  # the rounds' median p50
        p99_ms=max(p.p99_ms for p in parts),
        backend_calls=calls,
        mean_batch=texts / calls if calls else 0.0,
    )


def run(
    endpoints: Endpoints, procs: Processes, seconds: float, warmup: float, rounds: int
) -> dict[str, Result]:
    """Each round measures a, b, c, d in turn for `seconds / rounds`; figures are texts over time summed
    over the rounds, so that a noisy stretch of the machine's time does not land on one scenario only."""
    pool = sentences(2048)
    parts: dict[str, list[Result]] = {key: [] for key in SCENARIOS}
    for n in range(rounds):
        print(f"-- round {n + 1}/{rounds}", flush=True)
        for key, (label, where, model, per_request, users) in SCENARIOS.items():
            port = endpoints.backend if where == "backend" else endpoints.gateway
            parts[key].append(
                measure(
                    endpoints, procs, label, port, model, per_request, users, pool, seconds / rounds, warmup
                )
            )
    return {key: _combine(found) for key, found in parts.items()}


def machine() -> dict[str, str]:
    import torch

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
        "torch": torch.__version__,
        "nats_server": version.strip(),
        "loadavg_at_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=16.0, help="seconds measured per scenario")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per scenario and round")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds the duration is split over")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep-logs", type=Path, help="copy the child processes' logs here")
    args = parser.parse_args()
    started = time.perf_counter()
    info = machine()
    print(json.dumps(info), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        procs = Processes(Path(tmp))
        try:
            with stack(Path(tmp), procs) as endpoints:
                results = run(endpoints, procs, args.duration, args.warmup, args.rounds)
        finally:
            if args.keep_logs:
                args.keep_logs.mkdir(parents=True, exist_ok=True)
                for log in Path(tmp).glob("*.log"):
                    (args.keep_logs / log.name).write_bytes(log.read_bytes())
    a, b, c, d = (results[k].texts_per_s for k in "abcd")
    ratio = c / a
    print()
    print(f"{'scenario':52} {'texts/s':>9}")
    for key, (label, *_) in SCENARIOS.items():
        r = results[key]
        print(
            f"{label:52} {r.texts_per_s:9.1f}   mean backend batch {r.mean_batch:5.1f}   p50 {r.p50_ms:7.1f} ms"
        )
    print(f"(c)/(a) = {ratio:.1%}  target {TARGET:.0%}: {'PASS' if ratio >= TARGET else 'MISS'}")
    print(f"(c)/(d) = {c / d:.2f}x   (b)/(a) = {b / a:.1%}")
    total = time.perf_counter() - started
    info["loadavg_at_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"bench wall time {total:.0f} s; load average at start {info['loadavg_at_start']}, "
        f"at end {info['loadavg_at_end']} (on {info['cpus']} CPUs)",
        flush=True,
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": info,
                    "results": {k: vars(v) for k, v in results.items()},
                    "ratio_c_over_a": ratio,
                    "target": TARGET,
                    "wall_s": total,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
