"""Modelbus as deployed, beside its peers, in one run: what each gateway adds to the same backend.

    python -m bench.deployed                                # Modelbus, the floor and the backend alone
    python -m bench.deployed --litellm --portkey            # and both peers (installed on first use)
    python -m bench.deployed --litellm --portkey --seconds 8 --out bench/results/deployed.json

One mock OpenAI backend (the simulator: no latency, 16 tokens per answer) serves every gateway:
- **Modelbus** as `modelbus up` starts it (bench/stack.py `start_deployed`: embedded nats-server,
  dispatcher with the audit sink into Postgres, worker, ingress) on a fresh database;
- **LiteLLM**'s proxy, 2 workers, no database (bench/peers.py), if `--litellm`;
- **Portkey**'s open-source gateway, one Node process (bench/peers.py), if `--portkey`;
- **the floor**: a single-hop Python pass-through proxy (bench/floor_proxy.py);
- and the backend **direct**, the baseline every "added" latency is taken against.

Each cell runs every target in turn (so drift in the machine's load is shared), each in a load
generator process of its own (bench/loadgen.py), closed loop, for `--seconds` after a warm-up. The
CPU time of every process serving a gateway is read from /proc around each run: for Modelbus the
ingress, worker, dispatcher, nats-server and the Postgres backends connected to the stack's database
(found in pg_stat_activity; their CPU read from /proc like any other process; the cluster's shared
checkpointer, writers and autovacuum launcher are reported beside, not charged); for LiteLLM its
supervisor and workers. It prints the ratio table of issue 15 and writes every figure as JSON.
"""

from __future__ import annotations

import argparse
import datetime
import json
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: `bench.*` and the gateway's packages

from bench import peers, report, stack
from bench.cpu import CpuUsage, cpu_seconds
from bench.loadgen import LoadRun, Plan, RelayRun, run_loadgen
from bench.machine import busy_neighbours, machine_facts
from bench.stack import CHAT, CHAT_PATH, EMBEDDINGS, MODEL, Deployed, Processes, descendants, importable_here
from modelbus.embedded_nats import free_port

HOST = "127.0.0.1"
RELAY_STREAMS, RELAY_TOKENS, RELAY_REPEATS = 16, 500, 2
IDLE_SECONDS = 3.0
JSON_HEADERS = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class Cell:
    key: str
    path: str
    body: dict[str, Any]
    concurrency: int


CELLS = [
    Cell("chat@1", CHAT_PATH, CHAT, 1),
    Cell("chat@16", CHAT_PATH, CHAT, 16),
    Cell("stream@16", CHAT_PATH, {**CHAT, "stream": True}, 16),
    Cell("embeddings@16", "/v1/embeddings", EMBEDDINGS, 16),
]


@dataclass(frozen=True)
class Target:
    """A way to the backend: its port, the headers it wants and the processes that serve it."""

    name: str
    port: int
    headers: dict[str, str]
    watch: Callable[[], dict[str, list[int]]]


# --- starting every target ---------------------------------------------------------------------


def _answers(target: Target, path: str, body: dict[str, Any]) -> bool:
    try:
        url = f"http://{HOST}:{target.port}{path}"
        return httpx.post(url, json=body, headers=target.headers, timeout=10).status_code == 200
    except httpx.HTTPError:
        return False


def wait_serving(targets: list[Target], procs: Processes, timeout_s: float = 300) -> None:
    """Until every target answers chat and embeddings (LiteLLM takes a minute to start here)."""
    deadline = time.monotonic() + timeout_s
    for target in targets:
        while not (_answers(target, CHAT_PATH, CHAT) and _answers(target, "/v1/embeddings", EMBEDDINGS)):
            procs.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{target.name} does not answer")
            time.sleep(0.5)


def start_targets(args: argparse.Namespace, workdir: Path, procs: Processes) -> tuple[list[Target], Deployed]:
    backend_port = free_port()
    backend = procs.spawn(
        "simulator", stack._cli("simulator", "--port", str(backend_port), *stack.SIMULATOR_ARGS)
    )

    def with_backend(groups: dict[str, list[int]]) -> dict[str, list[int]]:
        return {**groups, "simulator": [backend.pid]}

    def tree(name: str, pid: int) -> Callable[[], dict[str, list[int]]]:
        return lambda: with_backend({name: descendants(pid)})

    targets = [Target("direct", backend_port, JSON_HEADERS, lambda: with_backend({}))]
    floor_port = free_port()
    floor_argv = ["--port", str(floor_port), "--upstream", f"http://{HOST}:{backend_port}"]
    floor = procs.spawn("floor", [sys.executable, "-m", "bench.floor_proxy", *floor_argv])
    targets.append(Target("floor", floor_port, JSON_HEADERS, tree("floor", floor.pid)))
    if args.litellm:
        port = free_port()
        command = peers.litellm_command(port, backend_port, MODEL, workdir)
        litellm = procs.spawn("litellm", command.argv, command.env)
        headers = {**JSON_HEADERS, "Authorization": f"Bearer {peers.LITELLM_MASTER_KEY}"}
        targets.append(Target("litellm", port, headers, tree("litellm", litellm.pid)))
    if args.portkey:
        port = free_port()
        command = peers.portkey_command(port)
        portkey = procs.spawn("portkey", command.argv, command.env)
        headers = {**JSON_HEADERS, **peers.portkey_headers(backend_port)}
        targets.append(Target("portkey", port, headers, tree("portkey", portkey.pid)))
    deployed = stack.start_deployed(workdir, stack.gateway_config(backend_port, stack.WORKER_SLOTS))
    headers = {**JSON_HEADERS, "Authorization": f"Bearer {stack.API_KEY}"}
    targets.append(Target("modelbus", deployed.port, headers, lambda: with_backend(deployed.pids())))
    return targets, deployed


# --- measuring ---------------------------------------------------------------------------------


def charge_late_processes(
    before: dict[str, list[int]], after: dict[str, list[int]], result: dict[str, Any]
) -> None:
    """A process that appeared during the run (a new Postgres backend, a respawned worker) did all
    its work inside the run: charge all of its CPU time to it."""
    served = result["requests"] + result["errors"]
    for group, pids in after.items():
        for pid in set(pids) - set(before.get(group, [])):
            try:
                used = cpu_seconds(pid)
            except OSError:
                continue  # gone again
            cpu = result["cpu_us_per_request"]
            cpu[group] = cpu.get(group, 0.0) + used / served * 1e6


def measure_cell(cell: Cell, target: Target, seconds: float, procs: Processes) -> dict[str, Any]:
    run = LoadRun(
        key=f"{cell.key}/{target.name}",
        port=target.port,
        method="POST",
        path=cell.path,
        body=json.dumps(cell.body),
        concurrency=cell.concurrency,
        requests=0,
        warmup=max(50, 20 * cell.concurrency),
        seconds=seconds,
    )
    watch = target.watch()
    result: dict[str, Any] = run_loadgen(Plan(HOST, target.headers, watch, [run]), procs)["loads"][run.key]
    charge_late_processes(watch, target.watch(), result)
    return result


def measure_relay(target: Target, procs: Processes) -> dict[str, Any]:
    body = json.dumps({**CHAT, "max_tokens": RELAY_TOKENS, "stream": True})
    key = f"relay@{RELAY_STREAMS}/{target.name}"
    run = RelayRun(key, target.port, CHAT_PATH, body, RELAY_STREAMS, RELAY_REPEATS, RELAY_TOKENS)
    result: dict[str, Any] = run_loadgen(Plan(HOST, target.headers, target.watch(), [], [run]), procs)
    return dict(result["relays"][key])


def measure_idle(target: Target, seconds: float) -> dict[str, Any]:
    """CPU a gateway's processes use with no traffic at all (timers, polls, heartbeats), in cores."""
    usage = CpuUsage(target.watch())
    time.sleep(seconds)
    usage.stop()
    cores = {group: used / seconds for group, used in usage.by_process.items() if group != "client"}
    return {"cores": cores, "gateway_cores": report.gateway_cpu_us({"cpu_us_per_request": cores})}


def measure(targets: list[Target], seconds: float, procs: Processes) -> dict[str, dict[str, Any]]:
    """Idle CPU; every cell, every target in turn within the cell; then the long streams."""
    results: dict[str, dict[str, Any]] = {"idle": {}}
    for target in targets:
        results["idle"][target.name] = idle = measure_idle(target, IDLE_SECONDS)
        print(
            f"  idle           {target.name:<9} {idle['gateway_cores']:.3f} cores",
            file=sys.stderr,
            flush=True,
        )
    for cell in CELLS:
        results[cell.key] = {}
        for target in targets:
            result = measure_cell(cell, target, seconds, procs)
            results[cell.key][target.name] = result
            gateway_cpu = report.gateway_cpu_us(result) / 1000
            print(
                f"  {cell.key:<14} {target.name:<9} p50 {result['latency_ms']['p50']:7.2f} ms"
                f"  {result['rps']:7,.0f} req/s  gateway CPU {gateway_cpu:6.2f} ms/req"
                f"  errors {result['errors']}  other CPU {result['foreign_cores']:.2f} cores",
                file=sys.stderr,
                flush=True,
            )
    relay_key = f"relay@{RELAY_STREAMS}"
    results[relay_key] = {}
    for target in targets:
        results[relay_key][target.name] = measure_relay(target, procs)
        print(
            f"  {relay_key:<14} {target.name:<9} "
            f"{results[relay_key][target.name]['tokens_per_s_per_stream']:9,.0f} tokens/s per stream",
            file=sys.stderr,
            flush=True,
        )
    return results


# --- the run -----------------------------------------------------------------------------------


def _on_sigterm(signum: int, frame: object) -> NoReturn:
    raise SystemExit(128 + signum)  # unwinds through the cleanup, like Ctrl-C does


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--litellm", action="store_true", help=f"LiteLLM {peers.LITELLM_VERSION}'s proxy too")
    parser.add_argument("--portkey", action="store_true", help=f"Portkey gateway {peers.PORTKEY_VERSION} too")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per cell and target")
    parser.add_argument(
        "--out", type=Path, help="write every figure as JSON (e.g. bench/results/deployed.json)"
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    signal.signal(signal.SIGTERM, _on_sigterm)
    importable_here()
    facts = machine_facts(wrk=False)
    facts["litellm"] = peers.LITELLM_VERSION if args.litellm else "not run"
    facts["portkey"] = peers.PORTKEY_VERSION if args.portkey else "not run"
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="modelbus-deployed-") as tmp:
        procs = Processes(Path(tmp))
        deployed: Deployed | None = None
        try:
            targets, deployed = start_targets(args, Path(tmp), procs)
            wait_serving(targets, procs)
            print(f"all targets serving after {time.monotonic() - began:.0f} s; measuring", file=sys.stderr)
            ours = {pid for target in targets for pids in target.watch().values() for pid in pids}
            neighbours = busy_neighbours(ours, sample_s=1.0)
            results = measure(targets, args.seconds, procs)
        finally:
            if deployed is not None:
                deployed.stop()
            procs.stop_all()
    output = {
        "command": " ".join(["python -m bench.deployed", *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "duration_s": time.monotonic() - began,
        "seconds_per_cell": args.seconds,
        "machine": facts,
        "busy_neighbours": neighbours,
        "relay": {"streams": RELAY_STREAMS, "tokens": RELAY_TOKENS, "repeats": RELAY_REPEATS},
        "results": results,
    }
    if args.out:
        args.out.write_text(json.dumps(output, indent=2) + "\n")
    print(report.render_deployed(output))


if __name__ == "__main__":
    main()
