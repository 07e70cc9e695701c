"""Real servers for tests: nats-server from the wheel, and Modelbus processes on free ports."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import nats
from sqlalchemy.engine import make_url

from dispatcher.bus.subjects import Subjects
from dispatcher.config.config_file import dump_config
from dispatcher.policy.api_keys import hash_key
from modelbus.embedded_nats import free_port
from schemas.config import ApiKey, ConsumerConfig, ModelbusConfig, ModelConfig
from schemas.envelope import Lane

TEST_KEY = "mb-test-key-0123456789abcdef0123456789abcdef"
OTHER_KEY = "mb-test-key-other-fedcba9876543210fedcba98765"
ADMIN_KEY = "mb-test-key-admin-00112233445566778899aabbccdd"

# Short timings so failure paths take seconds, not minutes.
FAST_BUS = {
    "MODELBUS_ACK_WAIT_S": "2",
    "MODELBUS_HEARTBEAT_S": "0.25",
    "MODELBUS_IDLE_TIMEOUT_S": "1.5",
    # A dispatcher stops when its consumer loops' idle pulls end: 0.2 s instead of 1 s per stop.
    "MODELBUS_IDLE_PULL_S": "0.2",
    "MODELBUS_SSE_KEEPALIVE_S": "1",
    "MODELBUS_CONNECT_WAIT_S": "10",
    # Every test has its own streams on one server, which reserves each stream's max_bytes.
    "MODELBUS_REQUEST_STREAM_MAX_BYTES": str(32 << 20),
    "MODELBUS_AUDIT_STREAM_MAX_BYTES": str(32 << 20),
    "MODELBUS_DEAD_LETTER_MAX_BYTES": str(8 << 20),
    "MODELBUS_SEMANTIC_CACHE_MAX_BYTES": str(8 << 20),
}


def sql(database_url: str, query: str) -> list[dict[str, Any]]:
    """Rows of one query against a test database (any libpq-style URL, sockets included)."""

    async def run() -> list[dict[str, Any]]:
        dsn = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
        conn = await asyncpg.connect(dsn)
        try:
            return [dict(row) for row in await conn.fetch(query)]
        finally:
            await conn.close()

    return asyncio.run(run())


def execute(database_url: str, statements: str) -> None:
    """Run SQL statements (several allowed, no results) against a test database."""

    async def run() -> None:
        dsn = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(statements)
        finally:
            await conn.close()

    asyncio.run(run())


def audit_records(database_url: str, where: str = "TRUE") -> list[dict[str, Any]]:
    """Audit events as the sink stored them (each row's `record`), oldest first."""
    rows = sql(database_url, f"SELECT record FROM audit_log WHERE {where} ORDER BY seq")
    return [json.loads(r["record"]) for r in rows]


def audit_actions(database_url: str) -> set[str]:
    """Every policy action the stored audit events name (`guardrail:action`, ...)."""
    return {a for record in audit_records(database_url) for a in record.get("policy_actions", [])}


def small_streams() -> dict[str, int]:
    """BusSettings keyword arguments that keep in-process tests' streams small."""
    return {
        "request_stream_max_bytes": 32 << 20,
        "audit_stream_max_bytes": 32 << 20,
        "dead_letter_max_bytes": 8 << 20,
        "semantic_cache_max_bytes": 8 << 20,
    }


def with_consumers(models: list[ModelConfig]) -> ModelbusConfig:
    return ModelbusConfig(
        models=models,
        consumers=[
            ConsumerConfig(
                name="tester", roles=["user"], keys=[ApiKey(id="test-key", hash=hash_key(TEST_KEY))]
            ),
            ConsumerConfig(
                name="other", roles=["user"], keys=[ApiKey(id="other-key", hash=hash_key(OTHER_KEY))]
            ),
            ConsumerConfig(
                name="auditor",
                roles=["user"],
                admin=True,
                keys=[ApiKey(id="admin-key", hash=hash_key(ADMIN_KEY))],
            ),
        ],
    )


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait()

    def stop(self, timeout: float = 15.0) -> None:
        self.terminate()
        self.wait_or_kill(timeout)

    def terminate(self) -> None:
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)

    def wait_or_kill(self, timeout: float) -> None:
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()


@dataclass
class Cluster:
    """Modelbus processes of one test, isolated from other tests by their own namespace."""

    tmp: Path
    nats_url: str
    namespace: str
    procs: list[Proc] = field(default_factory=list)
    env_overrides: dict[str, str] = field(default_factory=dict)
    # Readiness checks deferred by `together()` (condition, timeout, what, process); None when every
    # start waits for its process before the next one.
    _pending: list[tuple[Callable[[], bool], float, str, Proc]] | None = None

    @contextmanager
    def together(self) -> Iterator[None]:
        """Processes started inside start at once and are all ready when the block ends.

        A process's start-up is mostly Python imports (1.5-2.5 s of CPU each): started one after
        another they keep one core busy, started together they share both cores of the CI machine.
        Together they get the time they would have had one after another: the sum of their timeouts.
        """
        assert self._pending is None, "together() does not nest"
        self._pending = []
        try:
            yield
        finally:
            pending, self._pending = self._pending, None
        deadline = time.monotonic() + sum(timeout for _, timeout, _, _ in pending)
        for ready, _, what, proc in pending:
            wait_until(ready, deadline - time.monotonic(), f"{what} did not start", proc)

    def _ready(self, ready: Callable[[], bool], timeout: float, what: str, proc: Proc) -> None:
        """Wait for a process now, or at the end of the enclosing `together()` block."""
        if self._pending is None:
            wait_until(ready, timeout, f"{what} did not start", proc)
        else:
            self._pending.append((ready, timeout, what, proc))

    @property
    def subjects(self) -> Subjects:
        return Subjects(self.namespace)

    def env(self, config_path: Path | None = None, **extra: str) -> dict[str, str]:
        env = {
            **os.environ,
            **FAST_BUS,
            "MODELBUS_NATS_URL": self.nats_url,
            "MODELBUS_NAMESPACE": self.namespace,
            **self.env_overrides,
            **extra,
        }
        if config_path is not None:
            env["MODELBUS_CONFIG"] = str(config_path)
        return env

    def write_config(self, config: ModelbusConfig, name: str = "config.yaml") -> Path:
        path = self.tmp / name
        path.write_text(dump_config(config))
        return path

    def _count(self, name: str, marker: str) -> int:
        """How often a process of this name has logged `marker`: a restart appends to the same log."""
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace").count(marker) if path.exists() else 0

    def spawn(self, name: str, args: list[str], env: dict[str, str]) -> Proc:
        log_path = self.tmp / f"{name}.log"
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(
                [sys.executable, "-m", "modelbus", *args], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        proc = Proc(name, popen, log_path)
        self.procs.append(proc)
        return proc

    def ingress(self, config_path: Path, port: int | None = None, **extra: str) -> str:
        """Start an ingress (on `port` to restart one in place) and return its /v1 base URL."""
        port = port or free_port()
        proc = self.spawn(f"ingress-{port}", ["ingress", "--port", str(port)], self.env(config_path, **extra))
        base = f"http://127.0.0.1:{port}"
        self._ready(lambda: _ok(f"{base}/readyz"), 30, "ingress", proc)
        return base + "/v1"

    def worker(
        self,
        model: str,
        config_path: Path,
        worker_id: str,
        wait: bool = True,
        version: str = "default",
        **extra: str,
    ) -> Proc:
        args = ["worker", "--model", model, "--version", version]
        before = self._count(worker_id, "serving")
        proc = self.spawn(worker_id, args, self.env(config_path, MODELBUS_WORKER_ID=worker_id, **extra))
        if wait:
            self._ready(lambda: proc.log().count("serving") > before, 30, "worker", proc)
        return proc

    def dispatcher(self, config_path: Path, database_url: str | None = None, **extra: str) -> Proc:
        if database_url is not None:
            extra = {**extra, "MODELBUS_DATABASE_URL": database_url}
        env = self.env(config_path, **extra)
        before = self._count("dispatcher", "dispatcher running")
        proc = self.spawn("dispatcher", ["dispatcher"], env)
        self._ready(lambda: proc.log().count("dispatcher running") > before, 30, "dispatcher", proc)
        return proc

    def simulator(self, *options: str) -> tuple[str, Proc]:
        port = free_port()
        proc = self.spawn(f"simulator-{port}", ["simulator", "--port", str(port), *options], self.env())
        base = f"http://127.0.0.1:{port}"
        self._ready(lambda: _ok(f"{base}/health"), 30, "simulator", proc)
        return base, proc

    def consumer_info(
        self, model: str, lane: Lane = Lane.INTERACTIVE, version: str = "default"
    ) -> nats.js.api.ConsumerInfo:
        async def query() -> nats.js.api.ConsumerInfo:
            nc = await nats.connect(self.nats_url)
            try:
                subjects = self.subjects
                return await nc.jetstream().consumer_info(
                    subjects.request_stream, subjects.consumer(model, version, lane)
                )
            finally:
                await nc.close()

        return asyncio.run(query())

    def proc(self, name: str) -> Proc:
        """The most recent process of this name (restarts reuse names)."""
        return next(p for p in reversed(self.procs) if p.name == name)

    def close(self) -> None:
        """Stop every process, all at once: each still gets 5 s to exit before it is killed, but a
        test's teardown waits for its slowest process (the dispatcher's graceful loops finish their
        last one-second fetch), not for the sum of them all."""
        for proc in reversed(self.procs):
            proc.terminate()
        for proc in reversed(self.procs):
            proc.wait_or_kill(5)


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def wait_until(check: object, timeout: float, message: str, proc: Proc | None = None) -> None:
    """Poll `check` until it holds; fail with `message` (and `proc`'s log, read at failure time)."""
    deadline = time.monotonic() + timeout
    while True:  # checked at least once, even when a shared deadline has passed
        if check():  # type: ignore[operator]
            return
        if proc is not None and not proc.alive():
            raise AssertionError(f"{proc.name} exited: {message}:\n{proc.log()}")
        if time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    raise AssertionError(f"{message}:\n{proc.log()}" if proc is not None else message)
