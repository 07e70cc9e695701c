"""The HTTP edge, variant against variant in one run (issue 15, item 3): ingress CPU per chat
request at c=16 and added p50 at c=1, for one deployed stack served by differently built ingresses.

    python -m bench.http_edge [--rounds 5] [--seconds 4] [--variants syncdep,fastapi,edge,granian]
                              [--profile DIR] [--out FILE]

One `modelbus up` stack (bench/stack.py `start_deployed`: nats-server, dispatcher with the audit
sink into Postgres, one worker) and one more ingress process per variant (bench/edge_variants.py)
on the same bus and database, all launched the same way. The stack's own ingress is the variant
`deployed`, kept out of the default list: launched by `modelbus up` rather than by the bench, it
measured 2-5x lower added p50 at c=1 than the same code launched as a variant. After one discarded
warm-up pass, every round runs every variant in turn, in a rotated order, and the medians over
rounds are printed: on a shared machine only ratios taken this way carry over.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import stack
from bench.deployed import JSON_HEADERS, Cell, Target, measure_cell, wait_serving
from bench.stack import CHAT, CHAT_PATH, Processes, descendants
from modelbus.embedded_nats import free_port

CELLS = [Cell("chat@16", CHAT_PATH, CHAT, 16), Cell("chat@1", CHAT_PATH, CHAT, 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--variants", default="syncdep,fastapi,edge,granian")
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--profile", type=Path, metavar="DIR", help="then py-spy each variant's ingress at c=16"
    )
    args = parser.parse_args()
    variants = args.variants.split(",")
    stack.importable_here()
    with tempfile.TemporaryDirectory(prefix="modelbus-edge-") as tmp:
        procs = Processes(Path(tmp))
        deployed = None
        try:
            backend_port = free_port()
            backend = procs.spawn(
                "simulator", stack._cli("simulator", "--port", str(backend_port), *stack.SIMULATOR_ARGS)
            )
            deployed = stack.start_deployed(Path(tmp), stack.gateway_config(backend_port, stack.WORKER_SLOTS))
            env = next(c.env for c in deployed.stack.children if c.name == "ingress")
            headers = {**JSON_HEADERS, "Authorization": f"Bearer {stack.API_KEY}"}

            def watch_of(ingress_pid: int | None) -> Any:
                def watch() -> dict[str, list[int]]:
                    groups = deployed.pids()
                    # The ingress with its children (granian's worker, the offload processes), alike for all.
                    groups["ingress"] = descendants(ingress_pid or groups["ingress"][0])
                    return {**groups, "simulator": [backend.pid]}

                return watch

            targets: dict[str, Target] = {
                "direct": Target("direct", backend_port, JSON_HEADERS, lambda: {"simulator": [backend.pid]})
            }
            for variant in variants:
                if variant == "deployed":  # the stack's own ingress, as `modelbus up` started it
                    targets[variant] = Target(variant, deployed.port, headers, watch_of(None))
                    continue
                port = free_port()
                child = procs.spawn(
                    f"ingress-{variant}",
                    [sys.executable, "-m", "bench.edge_variants", variant, str(port)],
                    env,
                )
                targets[variant] = Target(variant, port, headers, watch_of(child.pid))
            wait_serving(list(targets.values()), procs)
            results: dict[str, dict[str, list[dict[str, Any]]]] = {
                c.key: {v: [] for v in ["direct", *variants]} for c in CELLS
            }
            # The first cell a fresh ingress serves costs up to 4x the rest (measured: 6.1-6.7 ms of CPU
            # per request against ~1.5): one discarded pass warms every variant first.
            for name in variants:
                measure_cell(CELLS[0], targets[name], 1.0, procs)
            for round_no in range(args.rounds):
                order = variants[round_no % len(variants) :] + variants[: round_no % len(variants)]
                for cell in CELLS:
                    names = (["direct"] if cell.concurrency == 1 else []) + order
                    for name in names:
                        result = measure_cell(cell, targets[name], args.seconds, procs)
                        results[cell.key][name].append(result)
                        cpu = result["cpu_us_per_request"]
                        print(
                            f"round {round_no} {cell.key:<8} {name:<16} p50 {result['latency_ms']['p50']:6.2f} ms"
                            f" {result['rps']:6.0f} req/s ingress {cpu.get('ingress', 0):6.0f} µs/req"
                            f" errors {result['errors']} other CPU {result['foreign_cores']:.2f}",
                            file=sys.stderr,
                            flush=True,
                        )
            if args.profile:
                args.profile.mkdir(parents=True, exist_ok=True)
                for variant in variants:
                    profile(targets[variant], args.profile / f"{variant}.txt", args.seconds * 2, procs)
        finally:
            if deployed is not None:
                deployed.stop()
            procs.stop_all()
    summary = summarize(results, variants)
    print(render(summary, variants))
    if args.out:
        args.out.write_text(json.dumps({"summary": summary, "runs": results}, indent=2) + "\n")


def profile(target: Target, out: Path, seconds: float, procs: Processes) -> None:
    """py-spy (raw collapsed stacks, 250 Hz, without pausing) on the ingress while chat c=16 runs."""
    pid = target.watch()["ingress"][0]  # with its children: granian's worker, the offload processes
    spy = subprocess.Popen(
        [
            "py-spy",
            "record",
            "--pid",
            str(pid),
            "--subprocesses",
            "--rate",
            "250",
            "--format",
            "raw",
            "--nonblocking",
            "--duration",
            str(int(seconds) + 2),
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)  # py-spy attaches
    measure_cell(CELLS[0], target, seconds, procs)
    spy.wait()


def summarize(results: dict[str, dict[str, list[dict[str, Any]]]], variants: list[str]) -> dict[str, Any]:
    direct_p50 = [r["latency_ms"]["p50"] for r in results["chat@1"]["direct"]]
    out: dict[str, Any] = {}
    for v in variants:
        c16, c1 = results["chat@16"][v], results["chat@1"][v]
        out[v] = {
            "ingress_us_c16": [r["cpu_us_per_request"].get("ingress", 0.0) for r in c16],
            "gateway_us_c16": [
                sum(x for g, x in r["cpu_us_per_request"].items() if g not in ("client", "simulator"))
                for r in c16
            ],
            "rps_c16": [r["rps"] for r in c16],
            "p99_c16": [r["latency_ms"]["p99"] for r in c16],
            "added_p50_c1": [r["latency_ms"]["p50"] - d for r, d in zip(c1, direct_p50, strict=True)],
            "ingress_us_c1": [r["cpu_us_per_request"].get("ingress", 0.0) for r in c1],
            "errors": sum(r["errors"] for r in c16 + c1),
        }
    return out


def render(summary: dict[str, Any], variants: list[str]) -> str:
    base = summary[variants[0]]
    head = (
        "| variant | ingress CPU/req c=16 (µs) | vs first | gateway CPU/req c=16 (µs) | req/s c=16 "
        "| p99 c=16 (ms) | added p50 c=1 (ms) | vs first | ingress CPU/req c=1 (µs) | errors |"
    )
    rows = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    med = statistics.median
    for v in variants:
        s = summary[v]
        rows.append(
            f"| {v} | {med(s['ingress_us_c16']):,.0f} | {med(s['ingress_us_c16']) / med(base['ingress_us_c16']):.2f} "
            f"| {med(s['gateway_us_c16']):,.0f} | {med(s['rps_c16']):,.0f} | {med(s['p99_c16']):.1f} "
            f"| {med(s['added_p50_c1']):.2f} | {med(s['added_p50_c1']) / med(base['added_p50_c1']):.2f} "
            f"| {med(s['ingress_us_c1']):,.0f} | {s['errors']} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    main()
