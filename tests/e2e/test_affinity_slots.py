"""Guest slots on a real llama-server: the worker pins every request to a slot (`id_slot`), its own
prompts to the home slots and another worker's work, stolen at once, to the guest slot, so a steal
evicts no home prompt. One llama-server with three slots behind worker `w-llama` (one guest slot, a
60 s steal grace for the home slots) and a slow simulator behind `w-sim`, the home of prompt P."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from dispatcher.scheduling.affinity import home_buckets, request_bucket
from modelbus.embedded_nats import NatsServer, free_port
from schemas.config import AffinityConfig, ModelConfig, OpenAIBackend, SimulatorBackend
from schemas.envelope import Endpoint, Lane
from tests.support.llama_server import ALIAS, run_llama_server
from tests.support.servers import ADMIN_KEY, TEST_KEY, Cluster, wait_until, with_consumers

pytestmark = [pytest.mark.llama, pytest.mark.timeout(300)]
AUTH = {"Authorization": f"Bearer {TEST_KEY}"}
WINDOW, BUCKETS = 200, 16
WORKERS = ("w-llama", "w-sim")


def _body(system: str, turn: str) -> dict[str, object]:
    messages = [{"role": "system", "content": system}, {"role": "user", "content": turn}]
    return {"model": "aff", "max_tokens": 2, "temperature": 0, "messages": messages}


def _home(system: str) -> str:
    bucket = request_bucket(Endpoint.CHAT, Lane.INTERACTIVE, _body(system, "x"), WINDOW, BUCKETS)
    assert bucket is not None
    return next(w for w in WORKERS if bucket in home_buckets(w, WORKERS, BUCKETS))


def _prompts() -> tuple[str, str, str]:
    """Two prompts at home on w-llama and one on w-sim, each of a different length."""
    by_home: dict[str, list[str]] = {w: [] for w in WORKERS}
    for n in range(64):
        system = f"You are assistant number {n}. Answer briefly. " * (8 + 3 * n)
        by_home[_home(system)].append(system)
    return by_home["w-llama"][0], by_home["w-llama"][1], by_home["w-sim"][0]


def _ask(gateway: str, system: str, turn: str, stream: bool = False) -> httpx.Response:
    body = {**_body(system, turn), "stream": stream}
    response = httpx.post(f"{gateway}/chat/completions", headers=AUTH, json=body, timeout=60)
    response.raise_for_status()
    assert not stream or response.text.rstrip().endswith("data: [DONE]")
    return response


def _slots(server: str) -> dict[int, int | None]:
    """Each slot's last prompt length in tokens (None: never used)."""
    return {s["id"]: s.get("n_prompt_tokens") for s in httpx.get(f"{server}/slots", timeout=10).json()}


def test_stolen_work_runs_in_the_guest_slot_and_home_prompts_keep_theirs(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    port = free_port()
    server = f"http://127.0.0.1:{port}"

    def model(backend: OpenAIBackend | SimulatorBackend, slots: int, guests: int) -> ModelConfig:
        affinity = AffinityConfig(window_chars=WINDOW, buckets=BUCKETS, per_bucket=1, guest_slots=guests)
        return ModelConfig(name="aff", backend=backend, max_concurrency=slots, affinity=affinity)

    cluster = Cluster(tmp_path, nats_server.url, "t" + uuid.uuid4().hex[:10])
    llama = model(OpenAIBackend(base_url=f"{server}/v1", served_model=ALIAS), 3, 1)
    slow = model(SimulatorBackend(ttft_ms=1500, tokens_per_s=1000), 1, 0)
    llama_config = cluster.write_config(with_consumers([llama]), "llama.yaml")
    sim_config = cluster.write_config(with_consumers([slow]), "sim.yaml")
    q1, q2, p = _prompts()
    try:
        with run_llama_server(port, tmp_path / "llama.log", parallel=3, ctx_size=1024):
            gateway = cluster.ingress(sim_config)
            # Quick heartbeats: each worker must see the other before the first request, or it takes
            # every bucket as its own and, having served one, keeps it (homes are sticky).
            beat = {"MODELBUS_HEARTBEAT_S": "0.3"}
            with cluster.together():
                cluster.worker(
                    "aff", llama_config, "w-llama", MODELBUS_AFFINITY_STEAL_GRACE_MS="60000", **beat
                )
                cluster.worker("aff", sim_config, "w-sim", **beat)
            capacity = gateway.removesuffix("/v1") + "/admin/capacity"
            admin = {"Authorization": f"Bearer {ADMIN_KEY}"}

            def registered() -> bool:
                rows = httpx.get(capacity, headers=admin, timeout=10).json()["data"]
                return any(r["model"] == "aff" and r["workers"] == 2 for r in rows)

            wait_until(registered, 20, "workers not registered")
            time.sleep(1.0)  # three heartbeats: both have computed their homes with the other there

            def at_home(system: str, worker: str) -> bool:
                answer = _ask(gateway, system, "hello")
                return (answer.headers["x-modelbus-worker"], answer.headers["x-modelbus-affinity"]) == (
                    worker,
                    "home",
                )

            assert at_home(p, "w-sim") and at_home(q1, "w-llama") and at_home(q2, "w-llama")
            # Two of w-sim's prompt at once: w-sim runs one (it has one slot), and w-llama takes the
            # other into its guest slot long before its 60 s steal grace would let a home slot take it.
            with ThreadPoolExecutor(2) as pool:
                answers = list(pool.map(lambda turn: _ask(gateway, p, turn, stream=True), ["one", "two"]))
            served = sorted(
                (a.headers["x-modelbus-worker"], a.headers["x-modelbus-affinity"]) for a in answers
            )
            assert served == [("w-llama", "stolen"), ("w-sim", "home")]
            tokens = {
                name: len(httpx.post(f"{server}/tokenize", json={"content": s}, timeout=10).json()["tokens"])
                for name, s in (("q1", q1), ("q2", q2), ("p", p))
            }
            assert len(set(tokens.values())) == 3
            in_slot = _slots(server)
            # Home prompts in the two home slots, P in the guest: each slot's prompt is its system
            # prompt plus the same chat template and turn (the prompts' lengths differ by 30 and 60).
            expected = {0: "q1", 1: "q2", 2: "p"}
            overheads = {(in_slot[n] or 0) - tokens[name] for n, name in expected.items()}
            assert len(overheads) == 1 and overheads.pop() > 0, (in_slot, tokens)
    finally:
        cluster.close()
