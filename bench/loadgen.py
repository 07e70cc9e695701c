"""The load generator of every HTTP benchmark (gateway_overhead, deployed, coalescing), a process of its own.

    python -m bench.loadgen < plan.json > results.json      (progress goes to stderr)

The client is kept as light as practical so that its own cost is small, and identical on the direct
and the gateway path: asyncio protocols on uvloop, responses parsed by httptools (llhttp, in C),
one keep-alive HTTP/1.1 connection per virtual user, and the next request written from the very
callback that completes the previous one — no task, future or coroutine per request. Timestamps
are taken in those callbacks, so event-loop scheduling does not inflate them.

Besides the closed-loop runs (counted in requests or in seconds, with one request body or several
in turn) it measures relayed tokens per second on long streams, the CPU time that each watched group
of server processes spends per request (bench/cpu.py), and, optionally, the single hops of the
gateway's path in isolation (`bench.hop_probes`).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

import httptools
import uvloop

from bench.cpu import CpuUsage
from bench.stats import summarize

if TYPE_CHECKING:
    from bench.stack import Processes

Measure = Literal["complete", "ttft"]
# Every content token of an OpenAI chat chunk, as serialized by orjson (no spaces), on both paths.
# Bytes arrive in arbitrary pieces, so the last len(marker) - 1 bytes of each piece are kept and
# searched again with the next one: a marker split across two pieces is found, and none is counted
# twice (a marker found entirely in one piece ends before the kept tail begins).
CONTENT_MARKER = b'"content":'
_TAIL = len(CONTENT_MARKER) - 1
P = TypeVar("P", bound=asyncio.Protocol)


# --- the plan (written by the orchestrator, read here) ----------------------------------------


@dataclass(frozen=True)
class LoadRun:
    """`concurrency` users on their own connections send `warmup` then `requests` requests back to back
    (or, with `seconds`, as many as they complete in that time: peers differ ten-fold in speed)."""

    key: str
    port: int
    method: str
    path: str
    body: str
    concurrency: int
    requests: int
    warmup: int
    measure: Measure = "complete"
    expect_status: int = 200
    seconds: float = 0.0
    bodies: list[str] = field(default_factory=list)  # sent in turn instead of `body`, when given


@dataclass(frozen=True)
class RelayRun:
    """`streams` concurrent long streams, `repeats` times; tokens counted as they arrive."""

    key: str
    port: int
    path: str
    body: str
    streams: int
    repeats: int
    tokens: int  # expected per stream, checked


@dataclass(frozen=True)
class ProbePlan:
    nats_url: str
    backend_port: int
    backend_path: str
    backend_body: str
    iterations: int


@dataclass(frozen=True)
class Plan:
    host: str
    headers: dict[str, str]
    watch: dict[str, list[int]]  # group name -> pids; their CPU time is sampled around each load run
    loads: list[LoadRun]
    relays: list[RelayRun] = field(default_factory=list)
    probe: ProbePlan | None = None

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Plan:
        probe = raw.get("probe")
        return cls(
            host=raw["host"],
            headers=raw["headers"],
            watch=raw["watch"],
            loads=[LoadRun(**item) for item in raw["loads"]],
            relays=[RelayRun(**item) for item in raw.get("relays", [])],
            probe=ProbePlan(**probe) if probe else None,
        )


# --- HTTP/1.1 over asyncio protocols ----------------------------------------------------------


def http_request(method: str, host: str, port: int, path: str, headers: dict[str, str], body: bytes) -> bytes:
    """One complete request, serialized once and written as is for every repetition."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class ClosedLoop:
    """Shared state of one closed-loop run: how many requests are left and what was measured."""

    def __init__(self, requests: list[bytes], measure: Measure, expect_status: int, users: int) -> None:
        self._requests = requests
        self._sent = 0
        self.measure = measure
        self.expect_status = expect_status
        self.remaining = 0
        self.deadline = 0.0  # perf_counter() time after which no request starts; 0: count only
        self.samples: list[float] = []
        self.errors = 0
        self._idle_users = 0
        self._users = users
        self._all_idle: asyncio.Future[None] | None = None

    def phase(self, requests: int, seconds: float = 0.0) -> asyncio.Future[None]:
        """Arm a new phase of `requests` requests (or of `seconds`); the future resolves when every
        user is idle."""
        self.remaining = requests
        self.deadline = time.perf_counter() + seconds if seconds else 0.0
        self.samples = []
        self.errors = 0
        self._idle_users = 0
        self._all_idle = asyncio.get_running_loop().create_future()
        return self._all_idle

    def next_request(self) -> bytes:
        """The requests in turn (most runs have one)."""
        self._sent += 1
        return self._requests[self._sent % len(self._requests)]

    def take(self) -> bool:
        if self.remaining <= 0 or (self.deadline and time.perf_counter() >= self.deadline):
            self._idle_users += 1
            if self._idle_users == self._users and self._all_idle and not self._all_idle.done():
                self._all_idle.set_result(None)
            return False
        self.remaining -= 1
        return True

    def fail(self, exc: BaseException) -> None:
        if self._all_idle is not None and not self._all_idle.done():
            self._all_idle.set_exception(exc)


class _Connection(asyncio.Protocol):
    """One virtual user: sends a request, records its latency, sends the next, until none are left."""

    def __init__(self, loop_state: ClosedLoop) -> None:
        self._run = loop_state
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._sent_at = 0.0
        self._first_at = 0.0
        self._tail = b""
        self._busy = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._run.fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._busy:
            self._run.fail(exc or ConnectionError("the server closed the connection mid-response"))

    # driving
    def next(self) -> None:
        if self._run.take():
            self._busy = True
            self._first_at = 0.0
            self._tail = b""
            assert self._transport is not None
            self._sent_at = time.perf_counter()
            self._transport.write(self._run.next_request())
        else:
            self._busy = False

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    # httptools callbacks
    def on_body(self, body: bytes) -> None:
        if self._run.measure == "ttft" and not self._first_at:
            window = self._tail + body
            if CONTENT_MARKER in window:
                self._first_at = time.perf_counter()
            else:
                self._tail = window[-_TAIL:]

    def on_message_complete(self) -> None:
        done_at = time.perf_counter()
        ok = self._parser.get_status_code() == self._run.expect_status
        if self._run.measure == "ttft":
            ok = ok and bool(self._first_at)
            done_at = self._first_at
        if ok:
            self._run.samples.append(done_at - self._sent_at)
        else:
            self._run.errors += 1
        self.next()


async def _open(host: str, port: int, factory: Callable[[], P]) -> P:
    _, protocol = await asyncio.get_running_loop().create_connection(factory, host, port)
    return protocol


async def closed_loop(
    host: str, headers: dict[str, str], run: LoadRun, watch: dict[str, list[int]]
) -> dict[str, Any]:
    requests = [
        http_request(run.method, host, run.port, run.path, headers, body.encode())
        for body in (run.bodies or [run.body])
    ]
    state = ClosedLoop(requests, run.measure, run.expect_status, run.concurrency)
    connections = [await _open(host, run.port, lambda: _Connection(state)) for _ in range(run.concurrency)]
    try:
        # The warm-up uses the same connections, so the measured phase opens none.
        if run.warmup:
            await _drive(state, connections, run.warmup)
        usage = CpuUsage(watch)
        began_at, began = time.time(), time.perf_counter()
        await _drive(state, connections, run.requests if not run.seconds else 1 << 62, run.seconds)
        wall = time.perf_counter() - began
        usage.stop()
    finally:
        for connection in connections:
            connection.close()
    done = len(state.samples)
    if not done:
        raise RuntimeError(f"{run.key}: no request succeeded ({state.errors} errors)")
    return {
        "requests": done,
        "errors": state.errors,
        "wall_s": wall,
        "window": [began_at, began_at + wall],  # epoch seconds, to match other processes' records
        "rps": (done + state.errors) / wall,
        "latency_ms": summarize(state.samples),
        "foreign_cores": usage.foreign / wall,
        "cpu_us_per_request": {
            name: used / (done + state.errors) * 1e6 for name, used in usage.by_process.items()
        },
    }


async def _drive(
    state: ClosedLoop, connections: list[_Connection], requests: int, seconds: float = 0.0
) -> None:
    finished = state.phase(requests, seconds)
    for connection in connections:
        connection.next()
    await finished


# --- relayed tokens per second ----------------------------------------------------------------


class _TokenCounter(asyncio.Protocol):
    """Receives one stream and counts content tokens in it, as they arrive."""

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self.tokens = 0
        self._tail = b""
        self.finished: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._parser.feed_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.finished.done():
            self.finished.set_exception(exc or ConnectionError("stream closed early"))

    def on_body(self, body: bytes) -> None:
        window = self._tail + body
        self.tokens += window.count(CONTENT_MARKER)
        self._tail = window[-_TAIL:]

    def on_message_complete(self) -> None:
        if self._parser.get_status_code() != 200:
            self.finished.set_exception(RuntimeError(f"HTTP {self._parser.get_status_code()}"))
        else:
            self.finished.set_result(time.perf_counter())


async def relay(
    host: str, headers: dict[str, str], run: RelayRun, watch: dict[str, list[int]]
) -> dict[str, Any]:
    request = http_request("POST", host, run.port, run.path, headers, run.body.encode())
    rates: list[float] = []
    usage, started = CpuUsage(watch), time.perf_counter()
    for _ in range(run.repeats):
        streams = [await _open(host, run.port, _TokenCounter) for _ in range(run.streams)]
        began = time.perf_counter()
        for stream in streams:
            assert stream.transport is not None
            stream.transport.write(request)
        ended = max(await asyncio.gather(*(s.finished for s in streams)))
        tokens = sum(s.tokens for s in streams)
        for stream in streams:
            assert stream.transport is not None
            stream.transport.close()
        expected = run.tokens * run.streams
        # Some gateways add chunks whose delta holds an empty or null "content" (a role chunk, the
        # finish chunk): more markers than tokens is fine, fewer means tokens were lost.
        if tokens < expected:
            raise RuntimeError(f"{run.key}: {tokens} tokens received, {expected} expected")
        rates.append(expected / (ended - began))
    usage.stop()
    return {
        "tokens_per_s_median": statistics.median(rates),
        "tokens_per_s_per_stream": statistics.median(rates) / run.streams,
        "tokens_per_s_runs": rates,
        "foreign_cores": usage.foreign / (time.perf_counter() - started),
    }


# --- the whole plan ---------------------------------------------------------------------------


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def execute(plan: Plan) -> dict[str, Any]:
    results: dict[str, Any] = {"loads": {}, "relays": {}, "probes": {}}
    for run in plan.loads:
        result = await closed_loop(plan.host, plan.headers, run, plan.watch)
        results["loads"][run.key] = result
        latency = result["latency_ms"]
        _progress(
            f"  {run.key:<26} p50 {latency['p50']:7.2f}  p99 {latency['p99']:7.2f} ms"
            f"  {result['rps']:8,.0f} req/s  errors {result['errors']}  foreign CPU {result['foreign_cores']:.2f}"
        )
    for relay_run in plan.relays:
        result = await relay(plan.host, plan.headers, relay_run, plan.watch)
        results["relays"][relay_run.key] = result
        _progress(
            f"  {relay_run.key:<26} {result['tokens_per_s_median']:10,.0f} tokens/s"
            f"  foreign CPU {result['foreign_cores']:.2f}"
        )
    if plan.probe is not None:
        from bench.hop_probes import run_probes  # nats-py and aiohttp only when probing

        results["probes"] = await run_probes(plan.probe, plan.host, plan.headers, _progress)
    return results


def run_loadgen(plan: Plan, procs: Processes) -> dict[str, Any]:
    """Run `plan` in a load generator process of its own (so its CPU is not the orchestrator's);
    returns its results without the warm-up runs (keys starting `warmup:`)."""
    root = Path(__file__).resolve().parents[1]
    child = procs.start_piped("loadgen", [sys.executable, "-m", "bench.loadgen"], cwd=root)
    out, _ = child.communicate(json.dumps(asdict(plan)).encode())
    procs.forget("loadgen")
    if child.returncode != 0:
        raise RuntimeError(f"the load generator failed with exit code {child.returncode}")
    results: dict[str, Any] = json.loads(out)["results"]
    results["loads"] = {k: v for k, v in results["loads"].items() if not k.startswith("warmup:")}
    return results


def main() -> None:
    plan = Plan.from_json(json.load(sys.stdin))
    results = uvloop.run(execute(plan))
    json.dump({"plan": asdict(plan), "results": results}, sys.stdout)


if __name__ == "__main__":
    main()
