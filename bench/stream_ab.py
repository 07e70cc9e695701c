"""Same-run A/B of checkouts on stream@16: CPU per stream by process, interleaved rounds.

    python -m bench.stream_ab --target main=/work/main --target new=. --rounds 6 --seconds 4

One simulator (as bench.deployed runs it) serves one deployed stack per checkout (each started by
that checkout's own bench/stack.py `start_deployed`: embedded nats-server, dispatcher with the audit
sink into Postgres, worker, ingress). Every round runs stream c=16 (16 chunks) against each target
in turn, in a rotated order, so drift in the machine's load is shared; it prints the median over
rounds of CPU µs per stream by process, and req/s. `--chat`: the same for chat c=16 (not streamed).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import report, stack
from bench.deployed import HOST, JSON_HEADERS, charge_late_processes
from bench.loadgen import LoadRun, Plan, run_loadgen
from bench.stack import CHAT, CHAT_PATH, Processes
from modelbus.embedded_nats import free_port

_HOLD = """
import json, sys, tempfile
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from bench import stack
with tempfile.TemporaryDirectory(prefix="modelbus-ab-") as tmp:
    deployed = stack.start_deployed(Path(tmp), stack.gateway_config(int(sys.argv[2]), stack.WORKER_SLOTS))
    try:
        print(json.dumps({"port": deployed.port, "database": deployed.database}), flush=True)
        sys.stdin.read()
    finally:
        deployed.stop()
"""


def _hold(root: Path, backend_port: int) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """A deployed stack of the checkout at `root`, held by a child process until its stdin closes."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the checkout's own code only
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(root), str(backend_port)],
        cwd=root,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    line = child.stdout.readline()
    if not line:
        raise RuntimeError(f"the stack of {root} did not start")
    return child, json.loads(line)


def _pids(holder: subprocess.Popen[str], database: str) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for pid in stack.descendants(holder.pid):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        text = b" ".join(cmd).decode(errors="replace")
        for name in ("nats-server", "dispatcher", "worker", "ingress"):
            if name in text and pid != holder.pid:
                groups.setdefault(name, []).append(pid)
                break
    return {**groups, **stack.postgres_pids(database)}


def _round(
    name: str,
    r: int,
    info: dict[str, dict[str, Any]],
    holders: dict[str, subprocess.Popen[str]],
    headers: dict[str, str],
    seconds: float,
    chat: bool = False,
) -> dict[str, float]:
    """One closed-loop run of stream c=16 (or chat c=16) against one target: its CPU µs per request
    by process."""
    database = info[name]["database"]
    watch = _pids(holders[name], database)
    body = json.dumps(CHAT if chat else {**CHAT, "stream": True})
    cell = "chat" if chat else "stream"
    run = LoadRun(
        f"{cell}@16/{name}/{r}", info[name]["port"], "POST", CHAT_PATH, body, 16, 0, 320, seconds=seconds
    )
    with tempfile.TemporaryDirectory(prefix="modelbus-ab-load-") as tmp:
        result = run_loadgen(Plan(HOST, headers, watch, [run]), Processes(Path(tmp)))["loads"][run.key]
    charge_late_processes(watch, _pids(holders[name], database), result)
    cpu: dict[str, float] = {
        k: v for k, v in result["cpu_us_per_request"].items() if k not in report.NOT_GATEWAY
    }
    cpu["total"] = sum(cpu.values())
    cpu["req/s"] = result["rps"]
    cpu["errors"] = result["errors"]
    cpu["foreign"] = result["foreign_cores"]
    return cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", action="append", required=True, help="name=checkout path")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument(
        "--paired",
        action="store_true",
        help="load every target at the same time (a busy machine's noise is shared)",
    )
    parser.add_argument("--chat", action="store_true", help="chat c=16 (not streamed) instead of streams")
    args = parser.parse_args()
    targets = {n: Path(p).resolve() for n, p in (t.split("=", 1) for t in args.target)}
    with tempfile.TemporaryDirectory(prefix="modelbus-ab-") as tmp:
        procs = Processes(Path(tmp))
        holders: dict[str, subprocess.Popen[str]] = {}
        try:
            backend_port = free_port()
            procs.spawn(
                "simulator", stack._cli("simulator", "--port", str(backend_port), *stack.SIMULATOR_ARGS)
            )
            info = {}
            for name, root in targets.items():
                holders[name], info[name] = _hold(root, backend_port)
            headers = {**JSON_HEADERS, "Authorization": f"Bearer {stack.API_KEY}"}
            rows: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
            names = list(targets)
            for r in range(args.rounds):
                order = names[r % len(names) :] + names[: r % len(names)]
                if args.paired:  # every target at once: each round's noise is shared
                    with ThreadPoolExecutor(len(order)) as pool:
                        runs = [
                            pool.submit(_round, name, r, info, holders, headers, args.seconds, args.chat)
                            for name in order
                        ]
                        found = [run.result() for run in runs]
                else:
                    found = [
                        _round(name, r, info, holders, headers, args.seconds, args.chat) for name in order
                    ]
                for name, cpu in zip(order, found, strict=True):
                    rows[name].append(cpu)
                    print(
                        f"round {r} {name:<6} "
                        + "  ".join(f"{k} {v:,.0f}" for k, v in cpu.items() if k != "foreign")
                        + f"  foreign {cpu['foreign']:.2f}",
                        file=sys.stderr,
                        flush=True,
                    )
            unit = "chat request" if args.chat else "stream (16 chunks)"
            print(f"\nmedian over rounds, CPU µs per {unit}:")
            keys = ["ingress", "worker", "nats-server", "dispatcher", "postgres", "total", "req/s", "errors"]
            print(f"{'':8}" + "".join(f"{k:>12}" for k in keys))
            for name in names:
                med = {k: statistics.median(row.get(k, 0.0) for row in rows[name]) for k in keys}
                print(f"{name:8}" + "".join(f"{med[k]:12,.0f}" for k in keys))
            base = names[0]
            for name in names[1:]:  # round by round, so that each ratio is of runs that shared the noise
                ratios = {
                    k: statistics.median(
                        b[k] / a[k] for a, b in zip(rows[base], rows[name], strict=True) if a.get(k)
                    )
                    for k in keys[:6]
                }
                print(
                    f"{name}/{base}, median of per-round ratios: "
                    + "  ".join(f"{k} {v:.2f}" for k, v in ratios.items())
                )
        finally:
            for holder in holders.values():
                if holder.stdin is not None:
                    holder.stdin.close()
            try:
                for holder in holders.values():
                    holder.wait(timeout=120)  # each stops its stack and drops its database
            finally:
                procs.stop_all()


if __name__ == "__main__":
    main()
