"""The CPU-heavy steps of admitting a large body, run in a worker process so the event loop never
waits on one request.

The same pool checks batch files (ingress/batch_files.py). A 4 MB chat body with 37,000 PII-laden messages costs about 75 ms of schema validation, 100 ms of
walks over the texts and 4 s of guardrail scanning; in the loop that stalled every other request
(a 3.6 MB body stalled `/healthz` for 6.6 s). A thread would not help: pydantic, orjson and `re`
hold the GIL for a whole call. So for bodies of `min_bytes` or more the steps run here, in a pool
of processes; only bytes and small results cross (pickling bytes is a copy), and the loop keeps
one `orjson.loads` of the result (about 18 ms for 4 MB). Smaller bodies stay inline: a process
round trip costs more than checking them.
"""

from __future__ import annotations

import asyncio
import ctypes
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from dispatcher.admission.prompt import (
    completion_budget,
    estimate_prompt_tokens,
    normalized,
    rewrite_texts,
)
from dispatcher.admission.validation import parse
from dispatcher.errors import RETRY_SOON_S, CheckerUnavailable, InvalidRequest
from dispatcher.guardrails.injection import prepare as prepare_injection_scan
from dispatcher.guardrails.policies import InputPolicy, input_guard
from schemas.endpoints import BY_PATH

T = TypeVar("T")
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_NICENESS = 10  # CFS weight 110 against the loop's 1024


@dataclass(frozen=True)
class Prepared:
    """A validated body, as admission needs it."""

    model: str
    stream: bool
    max_output: int | None
    sequences: int
    payload: bytes | None  # the normalized payload's JSON if normalizing changed it; None: as sent
    prompt_tokens: int  # estimate_prompt_tokens of the payload
    continues: bool  # it names a `previous_response_id` (a stored conversation to continue)


@dataclass(frozen=True)
class Scanned:
    """What the input guards found in a payload."""

    found: list[str]
    blocked: list[str]
    payload: bytes | None  # the rewritten (masked) payload's JSON; None: unchanged
    prompt_tokens: int  # estimate_prompt_tokens of the payload as sent on


@dataclass(frozen=True)
class _Invalid:
    """InvalidRequest, as data: exceptions with extra fields do not survive pickling intact."""

    message: str
    code: str
    param: str | None


def prepare(path: str, body: bytes) -> Prepared | _Invalid:
    """Validate `body` against the schema of the endpoint at `path` (in a worker process)."""
    try:
        parsed = parse(BY_PATH[path].schema, body)
    except InvalidRequest as exc:
        return _Invalid(exc.message, exc.code, exc.param)
    raw: dict[str, Any] = orjson.loads(body)
    payload = normalized(parsed, raw)
    max_output, sequences = completion_budget(parsed)
    return Prepared(
        model=parsed.model,  # type: ignore[attr-defined]  # every inference schema has one
        stream=bool(getattr(parsed, "stream", False)),
        max_output=max_output,
        sequences=sequences,
        payload=None if payload is raw else orjson.dumps(payload),
        prompt_tokens=estimate_prompt_tokens(payload),
        continues=bool(payload.get("previous_response_id")),
    )


def inspect_payload(
    policy: InputPolicy, payload: dict[str, Any]
) -> tuple[dict[str, Any], list[str], list[str]]:
    """(the payload with every text rewritten as the guards say, the findings, the guards that
    block): the offline input guards, the same inline (small bodies) and in a worker process."""
    found: list[str] = []
    blocked: list[str] = []
    guard = input_guard(policy)

    def change(text: str) -> str:
        result = guard.inspect(text)
        found.extend(result.events)
        if result.blocked_by is not None:
            blocked.append(result.blocked_by)
        return result.text

    return rewrite_texts(payload, change), found, blocked


def scan(policy: InputPolicy, payload_json: bytes) -> Scanned:
    """Run the offline input guards over every text of a payload (in a worker process)."""
    payload: dict[str, Any] = orjson.loads(payload_json)
    rewritten, found, blocked = inspect_payload(policy, payload) if policy.inspects else (payload, [], [])
    return Scanned(
        found=list(dict.fromkeys(found)),
        blocked=blocked[:1],
        payload=None if rewritten is payload else orjson.dumps(rewritten),
        prompt_tokens=estimate_prompt_tokens(rewritten),
    )


def _ready(parent: int) -> None:
    """Run once in each new worker: die with the ingress (a worker left behind would wait for work
    forever), and import everything a first request would."""
    if sys.platform == "linux":
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the ingress ended while this worker was starting: no signal comes
        os._exit(0)
    # Bulk work yields the CPU to the event loop: at equal priority two busy workers on a 2-core
    # machine left the loop a third of a core when a request arrived.
    os.setpriority(os.PRIO_PROCESS, 0, _NICENESS)
    input_guard(InputPolicy(pii="mask")).inspect("warm up +1 415 555 0101")
    prepare_injection_scan()


class Offload:
    """A pool of worker processes for large bodies (None of it is used below `min_bytes`)."""

    def __init__(self, processes: int, min_bytes: int) -> None:
        self.min_bytes = min_bytes
        # spawn, not fork: the ingress runs threads (NATS, the executor's own) that fork would copy
        # mid-flight.
        self.processes = processes
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        context = multiprocessing.get_context("spawn")
        return ProcessPoolExecutor(
            self.processes, mp_context=context, initializer=_ready, initargs=(os.getpid(),)
        )

    def wants(self, size: int) -> bool:
        return size >= self.min_bytes

    def start(self) -> None:
        """Start the workers now (in the background: their imports take seconds, and readiness must
        not wait for them), so that the first large request does not wait for them."""
        for _ in range(self.processes):
            self._pool.submit(os.getpid)  # any call: the pool starts its workers, which run _ready

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """`fn(*args)` in a worker process: a module-level function of picklable arguments."""
        pool = self._pool
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)
        except BrokenProcessPool:
            # A worker died (killed for memory, say): the pool refuses all work from then on.
            if self._pool is pool:
                pool.shutdown(wait=False, cancel_futures=True)
                self._pool = self._new_pool()
            raise CheckerUnavailable(
                "the process checking large requests was lost; retry",
                "checker_unavailable",
                retry_after_s=RETRY_SOON_S,
            ) from None

    async def prepare(self, path: str, body: bytes) -> Prepared:
        result = await self.run(prepare, path, body)
        if isinstance(result, _Invalid):
            raise InvalidRequest(result.message, result.code, result.param)
        return result

    async def scan(self, policy: InputPolicy, payload_json: bytes) -> Scanned:
        return await self.run(scan, policy, payload_json)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
