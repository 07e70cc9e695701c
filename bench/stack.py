"""The processes a benchmark runs against: nats-server, the simulator, one worker and one ingress.

Every child gets its own session, so a Ctrl-C in the terminal reaches only the benchmark, which
then stops them in order; and on Linux each child is told to die with its parent, so not even a
killed benchmark leaves servers behind.
"""

from __future__ import annotations

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

from dispatcher.config.config_file import dump_config
from dispatcher.policy.api_keys import hash_key
from modelbus.embedded_nats import free_port, nats_server_binary, port_in_use, write_config
from schemas.config import ApiKey, ConsumerConfig, ModelbusConfig, ModelConfig, OpenAIBackend
from schemas.envelope import Endpoint

_ROOT = Path(__file__).resolve().parents[1]
API_KEY = "mb-bench-key-0123456789abcdef0123456789abcdef"
MODEL = "bench"
_PR_SET_PDEATHSIG = 1


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


@dataclass(frozen=True)
class Stack:
    host: str
    nats_url: str
    simulator_port: int
    ingress_port: int
    pids: dict[str, int]  # nats-server, simulator, worker, ingress


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
