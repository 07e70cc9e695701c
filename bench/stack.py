"""The processes a benchmark runs against, started one way for every scenario.

- `start_deployed`: the stack as `modelbus up` runs it (modelbus/stack.py's own launcher: embedded
  nats-server, dispatcher with the audit sink into Postgres, worker, ingress), on a fresh database
  of the Postgres at MODELBUS_BENCH_POSTGRES, with the pids of every process that serves it.
- `start_stack`: a lean stack without dispatcher and audit sink (nats-server, simulator, worker,
  ingress), for the hop probes and GC traces of `bench/gateway_overhead.py`.
- `Processes`: the benchmark's own children (simulator, peer gateways, load generator).

Every child of `Processes` gets its own session, so a Ctrl-C in the terminal reaches only the benchmark, which
then stops them in order; and on Linux each child is told to die with its parent, so not even a
killed benchmark leaves servers behind.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dispatcher.config.config_file import dump_config
from dispatcher.policy.api_keys import hash_key
from modelbus import stack as up
from modelbus.embedded_nats import free_port, nats_server_binary, port_in_use, write_config
from schemas.config import ApiKey, ConsumerConfig, ModelbusConfig, ModelConfig, OpenAIBackend
from schemas.envelope import Endpoint

_ROOT = Path(__file__).resolve().parents[1]
API_KEY = "mb-bench-key-0123456789abcdef0123456789abcdef"
MODEL = "bench"
_PR_SET_PDEATHSIG = 1
# The backend of the gateway benchmarks: the simulator with no latency of its own, 16 tokens an answer.
SIMULATOR_ARGS = [
    "--ttft-ms", "0",
    "--tokens-per-s", "1000000000",
    "--embedding-latency-ms", "0",
    "--capacity", "1000",
    "--default-max-tokens", "16",
]  # fmt: skip
WORKER_SLOTS = 256  # the worker's max_concurrency: never the limit at the concurrencies measured
# The requests they send.
CHAT_PATH = "/v1/chat/completions"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Say something short."}], "max_tokens": 16}
EMBEDDINGS = {"model": MODEL, "input": "The quick brown fox jumps over the lazy dog"}


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM when the benchmark process goes away."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass  # not glibc: rely on the benchmark's own cleanup


_DIE_WITH_PARENT = _die_with_parent if sys.platform == "linux" else None


@dataclass
class Processes:
    """Child processes with their logs in one directory; `stop_all()` ends them newest first."""

    logs: Path
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with open(self.logs / f"{name}.log", "wb") as log:
            child = subprocess.Popen(
                argv,
                env=env if env is not None else dict(os.environ),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_DIE_WITH_PARENT,  # noqa: PLW1509 - the benchmark starts no threads
            )
        self.children[name] = child
        return child

    def start_piped(self, name: str, argv: list[str], cwd: Path | None = None) -> subprocess.Popen[bytes]:
        """A child whose stdin and stdout are pipes to us; its stderr (progress) stays the terminal's."""
        child = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_DIE_WITH_PARENT,  # noqa: PLW1509 - the benchmark starts no threads
        )
        self.children[name] = child
        return child

    def forget(self, name: str) -> None:
        """A child that has exited by itself needs no stopping."""
        self.children.pop(name, None)

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def check_alive(self) -> None:
        for name, child in self.children.items():
            if child.poll() is not None:
                raise RuntimeError(f"{name} exited with {child.returncode}:\n{self.log(name)[-3000:]}")

    def stop_all(self, timeout: float = 10.0) -> None:
        for name in reversed(list(self.children)):
            child = self.children.pop(name)
            if child.poll() is None:
                child.terminate()
                try:
                    child.wait(timeout)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
            # What the child started itself (a multi-worker server's workers, its resource tracker)
            # lives in the child's own session: end whatever is left of it.
            try:
                os.killpg(child.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass  # nothing left


@dataclass(frozen=True)
class Stack:
    host: str
    nats_url: str
    simulator_port: int
    ingress_port: int
    pids: dict[str, int]  # nats-server, simulator, worker, ingress

    @property
    def watch(self) -> dict[str, list[int]]:
        """The processes in the load generator's terms: one pid per group."""
        return {name: [pid] for name, pid in self.pids.items()}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "modelbus.cli", *args]


def _traced_cli(gc_trace: Path | None, name: str, *args: str) -> list[str]:
    """The gateway's own processes, optionally under `bench.gc_trace` (same command, GC timed)."""
    if gc_trace is None:
        return _cli(*args)
    return [sys.executable, "-m", "bench.gc_trace", str(gc_trace / f"gc-{name}.json"), "--", *args]


def _wait(check: Callable[[], bool], what: str, procs: Processes, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        procs.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout:.0f} s")
        time.sleep(0.05)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            return int(response.status) == 200
    except OSError:
        return False


def gateway_config(simulator_port: int, max_concurrency: int) -> ModelbusConfig:
    """One model on all three endpoints, served by the simulator through the OpenAI adapter."""
    backend = OpenAIBackend(base_url=f"http://127.0.0.1:{simulator_port}/v1", served_model="simulated")
    return ModelbusConfig(
        models=[
            ModelConfig(
                name=MODEL,
                endpoints=[Endpoint.CHAT, Endpoint.COMPLETIONS, Endpoint.EMBEDDINGS],
                backend=backend,
                max_concurrency=max_concurrency,
            )
        ],
        consumers=[
            ConsumerConfig(name="bench", roles=["user"], keys=[ApiKey(id="bench", hash=hash_key(API_KEY))])
        ],
    )


def start_nats(workdir: Path, procs: Processes) -> str:
    port = free_port()
    config = workdir / "nats.conf"
    write_config(config, port, workdir / "jetstream")
    procs.spawn("nats-server", [str(nats_server_binary()), "-c", str(config)])
    _wait(lambda: port_in_use(port), "nats-server", procs)
    return f"nats://127.0.0.1:{port}"


def start_stack(
    workdir: Path,
    procs: Processes,
    simulator_args: list[str],
    max_concurrency: int,
    gc_trace: Path | None = None,
) -> Stack:
    """Start everything with default gateway settings; return once the gateway answers."""
    nats_url = start_nats(workdir, procs)
    simulator_port = free_port()
    procs.spawn("simulator", _cli("simulator", "--port", str(simulator_port), *simulator_args))
    config = workdir / "config.yaml"
    config.write_text(dump_config(gateway_config(simulator_port, max_concurrency)))
    env = {
        **os.environ,
        "MODELBUS_NATS_URL": nats_url,
        "MODELBUS_CONFIG": str(config),
        "MODELBUS_NAMESPACE": "bench",
        # `python -m bench.gc_trace` must find this repository from any working directory.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(_ROOT), os.environ.get("PYTHONPATH")])),
    }
    procs.spawn("worker", _traced_cli(gc_trace, "worker", "worker", "--model", MODEL), env)
    ingress_port = free_port()
    procs.spawn("ingress", _traced_cli(gc_trace, "ingress", "ingress", "--port", str(ingress_port)), env)
    _wait(lambda: _http_ok(f"http://127.0.0.1:{simulator_port}/health"), "simulator", procs)
    _wait(_log_says(procs, "worker", "serving"), "worker", procs)
    _wait(lambda: _http_ok(f"http://127.0.0.1:{ingress_port}/readyz"), "ingress", procs)
    return Stack(
        host="127.0.0.1",
        nats_url=nats_url,
        simulator_port=simulator_port,
        ingress_port=ingress_port,
        pids={name: child.pid for name, child in procs.children.items()},
    )


def freeze_gc(procs: Processes, names: list[str]) -> None:
    """Ask processes started under `bench.gc_trace` to freeze what start-up left on the heap."""
    for name in names:
        procs.children[name].send_signal(signal.SIGUSR2)
    for name in names:
        _wait(_log_says(procs, name, "gc_trace: froze"), f"gc.freeze() in {name}", procs, 10)


def _log_says(procs: Processes, name: str, text: str) -> Callable[[], bool]:
    return lambda: text in procs.log(name)


def collect_gc_traces(procs: Processes, names: list[str], trace_dir: Path) -> None:
    """Have processes started under `bench.gc_trace` write what they recorded."""
    for name in names:
        (trace_dir / f"gc-{name}.json").unlink(missing_ok=True)
        procs.children[name].send_signal(signal.SIGUSR1)
    for name in names:
        _wait((trace_dir / f"gc-{name}.json").exists, f"GC trace of {name}", procs, 10)


# --- the stack as deployed ---------------------------------------------------------------------

POSTGRES = os.environ.get("MODELBUS_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
# The cluster's own processes: shared with every other database, so reported, never charged.
_SHARED_BACKENDS = ("checkpointer", "background writer", "walwriter", "autovacuum launcher")


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (a multi-worker server's supervisor and its workers)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_bytes()
            except OSError:
                continue  # exited meanwhile
            parents[int(entry.name)] = int(stat.rsplit(b")", 1)[1].split()[1])
    found, frontier = [pid], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        found += frontier
    return found


async def _postgres(sql: str, *args: object) -> list[Any]:
    import asyncpg

    connection = await asyncpg.connect(POSTGRES)
    try:
        return list(await connection.fetch(sql, *args))
    finally:
        await connection.close()


def postgres_pids(database: str) -> dict[str, list[int]]:
    """Backends serving `database` (pg_stat_activity; autovacuum workers on it included), and the
    cluster's shared background processes."""
    rows = asyncio.run(
        _postgres(
            "SELECT pid, datname, backend_type FROM pg_stat_activity"
            " WHERE datname = $1 OR backend_type = ANY($2::text[])",
            database,
            list(_SHARED_BACKENDS),
        )
    )
    return {
        "postgres": [r["pid"] for r in rows if r["datname"] == database],
        "postgres-shared": [r["pid"] for r in rows if r["datname"] != database],
    }


def importable_here() -> None:
    """Children started with this environment (`python -m modelbus.cli`, `python -m bench.…`)
    import this checkout, from any working directory."""
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if str(_ROOT) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_ROOT), *paths]))


@dataclass
class Deployed:
    """A running `modelbus up` stack; `pids()` names every process that serves it, by group."""

    stack: up.Stack
    database: str
    port: int

    def pids(self) -> dict[str, list[int]]:
        groups = {c.name: [c.process.pid] for c in self.stack.children if c.process is not None}
        if self.stack.nats is not None and self.stack.nats.process is not None:
            groups["nats-server"] = [self.stack.nats.process.pid]
        return {**groups, **postgres_pids(self.database)}

    def stop(self) -> None:
        self.stack.shutdown()
        asyncio.run(_postgres(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)'))


def start_deployed(workdir: Path, config: ModelbusConfig) -> Deployed:
    """`modelbus up` with `config`, on a fresh database; returns once the ingress is ready.

    The steps of the `up` command (modelbus/cli.py) with its own Stack, so the processes, their
    arguments and environment are those of a deployment; the caller must `stop()` it.
    """
    database = f"modelbus_bench_{os.getpid()}"
    asyncio.run(_postgres(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
    asyncio.run(_postgres(f'CREATE DATABASE "{database}"'))
    os.environ["MODELBUS_DATABASE_URL"] = POSTGRES.rsplit("/", 1)[0] + "/" + database
    importable_here()
    config_path = workdir / "modelbus.yaml"
    config_path.write_text(dump_config(config))
    stack = up.Stack(workdir / "modelbus", "127.0.0.1", free_port(), config_path, nats_url=None)
    deployed = Deployed(stack, database, stack.port)
    try:
        loaded, _, path = stack.prepare()
        nats_url = stack.start_nats()
        stack.store_configuration(path, nats_url)
        stack.launch(loaded, path, nats_url, stack.start_database())
        if not stack.wait_ready():
            raise TimeoutError(f"modelbus ingress not ready; logs in {workdir / 'modelbus' / 'logs'}")
    except BaseException:
        deployed.stop()
        raise
    return deployed
