"""Continuous mixed load (sync, streaming, async tasks) for fault tests, with a well-behaved client.

The client retries only what docs/ha.md calls retryable: a connection that fails before any
response (the next ingress is tried), `429/502/503/504` with `Retry-After` and an OpenAI error body,
and a stream that ends in an error event whose code is retryable. Async submissions are retried
with the same `Idempotency-Key`. Every attempt has a bounded timeout, so a hang shows up as a
`bad` outcome instead of a stuck test.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
import uuid
from dataclasses import dataclass, field

import httpx
import orjson

from tests.support.servers import TEST_KEY

RETRYABLE_STATUS = {429, 502, 503, 504}
RETRYABLE_STREAM_CODES = {"worker_lost", "stream_broken", "deadline_exceeded", "bus_unavailable"}
KINDS = ("sync", "stream", "async")


@dataclass(frozen=True)
class Answer:
    request_id: str
    gateway: str
    at: float  # monotonic time the response headers arrived


@dataclass
class Outcome:
    kind: str
    started: float
    ended: float
    result: str  # ok | clean (an OpenAI-shaped error, retries exhausted) | bad (anything else)
    detail: str = ""
    attempts: int = 1
    task_id: str | None = None
    idempotency_key: str | None = None
    answers: list[Answer] = field(default_factory=list)  # every answer an ingress gave (its request id)


@dataclass
class Window:
    name: str
    start: float
    end: float = float("inf")


@dataclass
class LoadRun:
    gateways: list[str]
    model: str
    concurrency: int = 6
    retry_budget_s: float = 40.0
    attempt_timeout_s: float = 30.0
    outcomes: list[Outcome] = field(default_factory=list)
    windows: list[Window] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 120.0) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "load clients did not finish: something hangs"

    def window(self, name: str) -> Window:
        window = Window(name, time.monotonic())
        self.windows.append(window)
        return window

    async def _run(self) -> None:
        counter = itertools.count()
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=0)
        async with httpx.AsyncClient(
            headers={"Authorization": f"Bearer {TEST_KEY}"},
            timeout=httpx.Timeout(self.attempt_timeout_s, connect=3.0),
            limits=limits,
        ) as client:

            async def loop(worker: int) -> None:
                while not self._stop.is_set():
                    n = next(counter)
                    started = time.monotonic()
                    try:
                        outcome = await self._one(client, KINDS[n % 3], n)
                    except Exception as exc:  # noqa: BLE001 - a client-side surprise is a bad outcome, never a quiet end
                        outcome = Outcome(KINDS[n % 3], started, time.monotonic(), "bad", _named(exc))
                    self.outcomes.append(outcome)

            await asyncio.gather(*(loop(i) for i in range(self.concurrency)))

    async def _one(self, client: httpx.AsyncClient, kind: str, n: int) -> Outcome:
        started = time.monotonic()
        key = uuid.uuid4().hex if kind == "async" else None
        body = {"model": self.model, "max_tokens": 6, "messages": [{"role": "user", "content": f"r{n}"}]}
        attempts = 0
        detail = ""
        seen: list[Answer] = []
        while True:
            attempts += 1
            base = self.gateways[(n + attempts) % len(self.gateways)]
            try:
                verdict, detail, task_id = await self._attempt(client, base, kind, body, key, seen)
            except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError) as exc:
                # Nothing was answered: the ingress is gone. Another one will do.
                verdict, detail, task_id = "retry", f"connection: {type(exc).__name__}", None
            except httpx.TimeoutException as exc:
                verdict, detail, task_id = "bad", f"timeout: {type(exc).__name__}", None
            except (httpx.HTTPError, ValueError, KeyError, TypeError, IndexError) as exc:
                # A write error, another protocol error, a 200 that is not the JSON it should be.
                verdict, detail, task_id = "bad", _named(exc), None
            if verdict != "retry":
                return Outcome(kind, started, time.monotonic(), verdict, detail, attempts, task_id, key, seen)
            if time.monotonic() - started > self.retry_budget_s:
                return Outcome(kind, started, time.monotonic(), "clean", detail, attempts, None, key, seen)
            await asyncio.sleep(min(0.2 * attempts, 1.0))

    async def _attempt(
        self,
        client: httpx.AsyncClient,
        base: str,
        kind: str,
        body: dict[str, object],
        key: str | None,
        seen: list[Answer],
    ) -> tuple[str, str, str | None]:
        if kind == "sync":
            r = await client.post(f"{base}/chat/completions", json=body)
            seen.append(_answer(r, base))
            if r.status_code == 200:
                ok = bool(r.json()["choices"][0]["message"]["content"])
                return ("ok" if ok else "bad"), "", None
            return _error_verdict(r), f"{r.status_code} {r.text[:200]}", None
        if kind == "async":
            headers = {"Idempotency-Key": key or ""}
            r = await client.post(
                f"{base}/tasks", json={"endpoint": "chat.completions", "body": body}, headers=headers
            )
            if r.status_code != 202:
                seen.append(_answer(r, base))  # a refusal is audited under this id
            if r.status_code == 202:
                return "ok", "", str(r.json()["id"])
            return _error_verdict(r), f"{r.status_code} {r.text[:200]}", None
        async with client.stream("POST", f"{base}/chat/completions", json={**body, "stream": True}) as r:
            seen.append(_answer(r, base))
            if r.status_code != 200:
                await r.aread()
                return _error_verdict(r), f"{r.status_code} {r.text[:200]}", None
            events = [line[6:] async for line in r.aiter_lines() if line.startswith("data: ")]
        if events and events[-1] == "[DONE]":
            return "ok", "", None
        if events:
            try:
                error = orjson.loads(events[-1]).get("error") or {}
            except orjson.JSONDecodeError:
                error = {}
            if error.get("code") in RETRYABLE_STREAM_CODES:
                return "retry", f"stream error {error.get('code')}", None
            if error.get("message"):
                return "clean", f"stream error {error}", None
        return "bad", f"stream ended without [DONE] or an error event: {events[-2:]}", None


def _answer(r: httpx.Response, base: str) -> Answer:
    return Answer(r.headers.get("x-request-id", ""), base, time.monotonic())


def _named(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def _error_verdict(r: httpx.Response) -> str:
    try:
        error = r.json()["error"]
        shaped = isinstance(error.get("message"), str) and isinstance(error.get("type"), str)
    except (ValueError, KeyError, TypeError, AttributeError):
        shaped = False
    if not shaped or r.status_code == 500:
        return "bad"
    if r.status_code in RETRYABLE_STATUS and r.headers.get("retry-after"):
        return "retry"
    return "clean"


def p99_ms(values: list[float]) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def report(run: LoadRun, lost: int, duplicated: int) -> str:
    """A Markdown table: totals, then p99 latency of the requests started in each fault window."""
    rows = ["| window | sent | succeeded | failed cleanly | bad | p99 ms |", "|---|---|---|---|---|---|"]

    def row(name: str, outcomes: list[Outcome]) -> str:
        counts = {k: sum(o.result == k for o in outcomes) for k in ("ok", "clean", "bad")}
        p99 = p99_ms([o.ended - o.started for o in outcomes])
        return (
            f"| {name} | {len(outcomes)} | {counts['ok']} | {counts['clean']} | {counts['bad']} | {p99:.0f} |"
        )

    for window in run.windows:
        rows.append(row(window.name, [o for o in run.outcomes if window.start <= o.started < window.end]))
    rows.append(row("**whole run**", run.outcomes))
    retried = sum(o.attempts > 1 for o in run.outcomes)
    rows.append("")
    rows.append(f"lost: **{lost}**, duplicated: **{duplicated}**, requests that needed a retry: {retried}")
    return "\n".join(rows)
