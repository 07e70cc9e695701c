"""Cluster-wide request traffic per model over the last minute, read off the audit subjects.

Every request leaves exactly one audit event, so a plain core-NATS subscription to the audit subjects
sees all traffic of all ingresses and task collectors, with no consumer to create or clean up and
nothing added to the request path. Used by `modelbus top` and the ops page.

Audit events carry prompts and answers, so restricted NATS users (an ingress with per-component
permissions) may not read them; such an ingress feeds the watch with its own requests instead
(`local`), and its ops page shows that ingress's traffic.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from dispatcher.bus.subjects import Subjects

WINDOW_S = 60.0


@dataclass(frozen=True, slots=True)
class Figures:
    requests_per_s: float
    p50_s: float | None
    p95_s: float | None
    tokens_per_s: float
    errors: int


@dataclass
class _Window:
    # at, latency, tokens, ok, consumer
    done: deque[tuple[float, float, int, bool, str]] = field(default_factory=deque)

    def _trim(self, now: float) -> None:
        while self.done and self.done[0][0] < now - WINDOW_S:
            self.done.popleft()

    def served_shares(self, now: float) -> dict[str, float]:
        self._trim(now)
        counts: dict[str, int] = {}
        for done in self.done:
            counts[done[4]] = counts.get(done[4], 0) + 1
        total = sum(counts.values())
        return {consumer: count / total for consumer, count in counts.items()}

    def figures(self, now: float) -> Figures:
        self._trim(now)
        if not self.done:
            return Figures(0.0, None, None, 0.0, 0)
        span = max(1.0, min(WINDOW_S, now - self.done[0][0]))
        latencies = sorted(d[1] for d in self.done)
        return Figures(
            requests_per_s=len(self.done) / span,
            p50_s=latencies[len(latencies) // 2],
            p95_s=latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))],
            tokens_per_s=sum(d[2] for d in self.done) / span,
            errors=sum(1 for d in self.done if not d[3]),
        )


class TrafficWatch:
    def __init__(self, nc: NATS, subjects: Subjects, known: Callable[[str], bool] = lambda _: True) -> None:
        self._nc = nc
        self._subjects = subjects
        self._known = known  # models worth a window: clients' made-up names must not grow the dict
        self._models: dict[str, _Window] = {}
        self._sub: Subscription | None = None
        self.local = True  # until subscribed to the cluster's audit subjects

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(self._subjects.all_audit, cb=self._on_event)
        self.local = False

    def observe(self, model: str, latency_s: float, tokens: int, ok: bool, consumer: str = "") -> None:
        self._models.setdefault(model, _Window()).done.append((time.time(), latency_s, tokens, ok, consumer))

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()

    async def _on_event(self, msg: Msg) -> None:
        try:
            event = orjson.loads(msg.data)
        except orjson.JSONDecodeError:
            return
        model = event.get("model_requested") or event.get("model_served")
        received, finished = event.get("received_ms"), event.get("finished_ms")
        if not model or received is None or finished is None or not self._known(model):
            return
        ok = event.get("status") == "served"
        latency_s = (finished - received) / 1000
        self.observe(model, latency_s, event.get("total_tokens") or 0, ok, str(event.get("consumer") or ""))

    def figures(self, model: str) -> Figures:
        return self._models.get(model, _Window()).figures(time.time())

    def served_shares(self, model: str) -> dict[str, float]:
        """Each consumer's part of the model's answers over the last minute."""
        return self._models.get(model, _Window()).served_shares(time.time())
