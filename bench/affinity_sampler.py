"""What bench/affinity.py samples while it runs: busy slots per backend and requests in the queue.

Every 50 ms, from each llama-server's /slots and the model's JetStream consumers, so the report can
say how often (and for how long) a backend sat idle while work waited in the bus.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from typing import Any

import nats

from dispatcher.bus.subjects import Subjects
from dispatcher.scheduling.capacity_view import lane_consumers

# Straight to loopback: an environment's proxy settings must not route the bench's own probes.
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get_json(url: str) -> Any:
    with DIRECT.open(url, timeout=5) as response:
        return json.loads(response.read())


def evaluated_tokens(base: str) -> float:
    """Prompt tokens the server evaluated (cached prefixes are not evaluated again)."""
    with DIRECT.open(f"{base}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("llamacpp:prompt_tokens_total"):
                return float(line.split()[-1])
    return float("nan")


class Sampler:
    """Every 50 ms: busy slots per backend and requests waiting in the bus."""

    def __init__(self, backends: list[str], nats_url: str, model: str, buckets: int) -> None:
        self.backends, self.nats_url, self.model, self.buckets = backends, nats_url, model, buckets
        self.samples: list[tuple[list[int], int]] = []
        self.times: list[float] = []

    async def run(self, stop: asyncio.Event) -> None:
        nc = await nats.connect(self.nats_url)
        js, subjects = nc.jetstream(), Subjects("bench")
        try:
            while not stop.is_set():
                busy = [
                    sum(1 for s in await asyncio.to_thread(get_json, f"{b}/slots") if s.get("is_processing"))
                    for b in self.backends
                ]
                infos = await lane_consumers(js, subjects, self.model, "default", self.buckets)
                queued = sum(info.num_pending or 0 for _, info in infos)
                self.samples.append((busy, queued))
                self.times.append(time.monotonic())
                await asyncio.sleep(0.05)
        finally:
            await nc.close()

    def summary(self, slots: int) -> dict[str, float]:
        queued = [(busy, q) for busy, q in self.samples if q > 0]
        idle = sum(1 for busy, _ in queued if min(busy) == 0)
        free = sum(1 for busy, _ in queued if min(busy) < slots)
        # A 50 ms sample also catches the moment between a publish and its pull (FIFO has those too):
        # what matters is a backend left idle while work waits, so the stretches are measured as well.
        stretches: list[float] = []
        for n in range(len(self.backends)):
            began: float | None = None
            for (busy, q), at in zip(self.samples, self.times, strict=True):
                idle_here = q > 0 and busy[n] == 0
                if idle_here and began is None:
                    began = at
                elif not idle_here and began is not None:
                    stretches.append(at - began)
                    began = None
        return {
            "samples": len(self.samples),
            "samples_with_queue": len(queued),
            "backend_idle_while_queued": idle,
            "backend_free_slot_while_queued": free,
            "idle_while_queued_longest_s": round(max(stretches, default=0.0), 2),
            "idle_while_queued_over_250ms": sum(1 for s in stretches if s > 0.25),
        }
