"""What the policy layer costs per request: identity, RBAC, input guardrails, quota admission (real
JetStream counters on a private nats-server), and the worker's output guardrails.

    python bench/policy_overhead.py [--requests 3000]

Every step runs the production code the ingress and worker run, in process, with all guardrails on
(PII mask, injection block, content block, output PII mask) and a 2,000-character prompt; the quota
step includes its NATS round trips. Prints a markdown table of p50/p99 per step and for the whole
ingress-side layer.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.stats import percentile
from dispatcher.admission.guardrails import Guardrails
from dispatcher.admission.identity import identity_for
from dispatcher.admission.live_config import LiveConfig
from dispatcher.admission.prompt import estimate_tokens
from dispatcher.admission.quota_gate import Held, QuotaGate
from dispatcher.bus.bus_settings import BusSettings
from dispatcher.bus.subjects import Subjects
from dispatcher.guardrails.response import ResponseGuard
from dispatcher.policy.api_keys import hash_key
from dispatcher.policy.quotas import Limiter, QuotaLedger
from ingress.key_lookup import KeyRing
from modelbus.embedded_nats import single_server
from schemas.config import ApiKey, ConsumerConfig, ModelbusConfig, ModelConfig
from schemas.envelope import Endpoint
from schemas.policy import GuardrailsConfig, Limits

KEY = "mb-bench-policy-0123456789abcdef0123456789abcdef"
_SENTENCE = (
    "Our quarterly planning review covers the migration of the billing service, the new caching layer "
    "and the on-call rotation for the platform team; please summarise the risks and next steps. "
)
CLEAN = (_SENTENCE * 20)[:2000]
WITH_PII = (
    _SENTENCE * 8
    + "Contact anna.schmidt@example.de or +49 30 901820, card 5555 5555 5555 4444. "
    + _SENTENCE * 8
)[:2000]
ANSWER = (
    _SENTENCE * 9 + "The account owner is ops@example.com and the card on file is 4111 1111 1111 1111. "
)[:2000]


def _config() -> ModelbusConfig:
    guard = GuardrailsConfig(pii="mask", injection="block", content="block", output_pii="mask")
    return ModelbusConfig(
        models=[ModelConfig(name="m", guardrails=guard)],
        consumers=[
            ConsumerConfig(
                name="c",
                roles=["user"],
                keys=[ApiKey(id="k", hash=hash_key(KEY))],
                limits=Limits(requests_per_min=10**9, tokens_per_min=10**12, tokens_per_day=10**13),
            )
        ],
    )


async def run(requests: int) -> dict[str, list[float]]:
    server = single_server(Path(tempfile.mkdtemp(prefix="mb-policy-bench-")))
    server.start()
    nc = await nats.connect(server.url)
    try:
        subjects = Subjects("pb")
        config = _config()
        live = LiveConfig(config)
        keys = KeyRing(config)
        ledger = await QuotaLedger.open(nc, subjects, BusSettings(nats_url=server.url))
        gate = QuotaGate(Limiter(ledger, subjects), ledger)
        guardrails = Guardrails(None)
        model = config.models[0]
        timings: dict[str, list[float]] = {
            k: [] for k in ("identity", "rbac", "input guardrails", "quota", "total")
        }
        timings["input guardrails (prompt with PII)"] = []
        timings["output guardrails (2,000-char answer)"] = []
        timings["output guardrails (same, streamed in 4-char chunks)"] = []
        for i in range(requests):
            prompt = WITH_PII if i % 2 else CLEAN
            payload: dict[str, Any] = {
                "model": "m",
                "max_tokens": 256,
                "messages": [{"role": "user", "content": prompt}],
            }
            t0 = time.perf_counter()
            consumer, key_id = keys.identify(KEY)  # type: ignore[misc]
            identity = identity_for(consumer, key_id, config.consumer(consumer), frozenset())
            t1 = time.perf_counter()
            assert live.authorizer.permits(identity.roles, "m", "chat")
            t2 = time.perf_counter()
            policy, output = guardrails.policies(live.revision, model, identity)
            payload = (await guardrails.check_input(policy, payload, [])).payload
            t3 = time.perf_counter()
            tokens = estimate_tokens(Endpoint.CHAT, payload, 256)
            held = Held(await gate.admit(identity, "m", tokens, None))
            t4 = time.perf_counter()
            held.take()
            timings["identity"].append(t1 - t0)
            timings["rbac"].append(t2 - t1)
            timings["input guardrails" if not i % 2 else "input guardrails (prompt with PII)"].append(t3 - t2)
            timings["quota"].append(t4 - t3)
            timings["total"].append(t4 - t0)
            assert output is not None
            body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": ANSWER}}]}
            t5 = time.perf_counter()
            ResponseGuard(output, Endpoint.CHAT).body(body)
            t6 = time.perf_counter()
            guard = ResponseGuard(output, Endpoint.CHAT)
            for at in range(0, len(ANSWER), 4):
                guard.chunk(
                    {
                        "choices": [
                            {"index": 0, "delta": {"content": ANSWER[at : at + 4]}, "finish_reason": None}
                        ]
                    }
                )
            guard.finish()
            t7 = time.perf_counter()
            timings["output guardrails (2,000-char answer)"].append(t6 - t5)
            timings["output guardrails (same, streamed in 4-char chunks)"].append(t7 - t6)
        return timings
    finally:
        await nc.close()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()
    timings = asyncio.run(run(args.requests))
    print("| step | p50 | p99 | mean |")
    print("|---|---|---|---|")
    for name, samples in timings.items():
        samples = samples[len(samples) // 10 :]  # warm-up
        print(
            f"| {name} | {percentile(samples, 50) * 1e6:.0f} µs | {percentile(samples, 99) * 1e6:.0f} µs "
            f"| {statistics.fmean(samples) * 1e6:.0f} µs |"
        )


if __name__ == "__main__":
    main()
