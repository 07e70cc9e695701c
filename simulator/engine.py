"""The simulated model: token timing, a capacity limit like a GPU's batch slots, failures, stats."""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from schemas.config import ScriptedToolCall, SimulatorBackend

_WORDS = [
    "the",
    "model",
    "says",
    "hello",
    "from",
    "a",
    "simulated",
    "accelerator",
    "while",
    "tokens",
    "flow",
    "through",
    "the",
    "bus",
    "and",
    "every",
    "worker",
    "pulls",
    "only",
    "what",
    "it",
    "can",
    "serve",
]


class SimulatedFailure(Exception):
    """Raised at the start of a request, with probability `error_rate`."""


class SimulatedBadRequest(Exception):
    """The request cannot be served as asked (like a real server's context-length error)."""


@dataclass
class SimulatorStats:
    started: int = 0
    completed: int = 0
    aborted: int = 0
    failed: int = 0
    active: int = 0
    max_active: int = 0
    embedding_calls: int = 0
    abort_times: list[float] = field(default_factory=list)  # time.time() of each abort

    def as_dict(self) -> dict[str, Any]:
        return {
            "started": self.started,
            "completed": self.completed,
            "aborted": self.aborted,
            "failed": self.failed,
            "active": self.active,
            "max_active": self.max_active,
            "embedding_calls": self.embedding_calls,
            "abort_times": list(self.abort_times),
        }


class SimulatedModel:
    def __init__(self, config: SimulatorBackend, seed: int | None = None) -> None:
        self.config = config
        self.stats = SimulatorStats()
        self._slots = asyncio.Semaphore(config.capacity)
        self._random = random.Random(seed)

    def _maybe_fail(self) -> None:
        if self.config.error_rate and self._random.random() < self.config.error_rate:
            self.stats.failed += 1
            raise SimulatedFailure("simulated backend failure")

    def scripted(self, prompt: str) -> tuple[list[str], list[ScriptedToolCall]] | None:
        """The tokens and tool calls of the first scripted reply whose pattern the prompt matches."""
        for entry in self.config.script:
            if re.search(entry.match, prompt):
                reply = entry.reply.replace("{prompt}", prompt)
                return pieces(reply) or ([] if entry.tool_calls else [""]), entry.tool_calls
        return None

    async def tokens(self, max_tokens: int, words: list[str] | None = None) -> AsyncIterator[str]:
        """Yield `max_tokens` tokens (or `words`, if fewer): the first after ttft, then at tokens_per_s.

        Closing the iterator early (the caller went away) counts as an abort.
        """
        if max_tokens > self.config.context_length:
            raise SimulatedBadRequest(
                f"max_tokens {max_tokens} exceeds the context length {self.config.context_length}"
            )
        self._maybe_fail()
        finished = False
        async with self._slots:
            self.stats.started += 1
            self.stats.active += 1
            self.stats.max_active = max(self.stats.max_active, self.stats.active)
            try:
                interval = 1.0 / self.config.tokens_per_s
                start = time.monotonic()
                if self.config.ttft_ms:
                    await _sleep_until(start + self.config.ttft_ms / 1000)
                for index in range(min(max_tokens, len(words)) if words is not None else max_tokens):
                    if index and interval >= 1e-5:
                        # Sleep to an absolute schedule so slow event-loop turns do not add up.
                        await _sleep_until(start + self.config.ttft_ms / 1000 + index * interval)
                    if words is not None:
                        yield words[index]
                    else:
                        yield ("" if index == 0 else " ") + _WORDS[index % len(_WORDS)]
                finished = True
                self.stats.completed += 1
            finally:
                self.stats.active -= 1
                if not finished:
                    self.stats.aborted += 1
                    self.stats.abort_times.append(time.time())

    async def embed(self, texts: list[str]) -> list[list[float]]:
        """Deterministic unit vectors derived from each text's hash (equal texts, equal vectors)."""
        self._maybe_fail()
        self.stats.embedding_calls += 1
        async with self._slots:
            if self.config.embedding_latency_ms:
                await _sleep_until(time.monotonic() + self.config.embedding_latency_ms / 1000)
        return [_vector(text, self.config.embedding_dim) for text in texts]


def pieces(text: str) -> list[str]:
    """Text cut like BPE tokens: up to 4 characters with the whitespace before them."""
    return re.findall(r"\s*\S{1,4}", text)


def _vector(text: str, dim: int) -> list[float]:
    raw = b""
    counter = 0
    while len(raw) < dim * 4:
        raw += hashlib.sha256(f"{counter}:{text}".encode()).digest()
        counter += 1
    values = [v / 2**31 - 1.0 for v in struct.unpack(f"<{dim}I", raw[: dim * 4])]
    norm = sum(v * v for v in values) ** 0.5 or 1.0
    return [v / norm for v in values]


async def _sleep_until(deadline: float) -> None:
    """Sleep until `deadline` (monotonic), never less: the configured latencies are minimums that
    tests and benchmarks rely on. A single `asyncio.sleep` can end early under uvloop, whose timers
    count from the loop's cached time, which lags behind the clock while the loop is busy."""
    while (left := deadline - time.monotonic()) > 0:
        await asyncio.sleep(left)
