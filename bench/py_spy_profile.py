"""py-spy profiles of the ingress and the worker while the gateway serves non-streaming chat."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from bench.loadgen import LoadRun, Plan
from bench.profile_summary import load as load_profile
from bench.profile_summary import render as render_profile
from bench.stack import CHAT, CHAT_PATH, Processes, Stack

ROOT = Path(__file__).resolve().parents[1]  # the load generator runs as `python -m bench.loadgen` from here


def profile(
    stack: Stack,
    procs: Processes,
    headers: dict[str, str],
    out_dir: Path,
    seconds: float,
    rps: dict[int, float],
) -> dict[str, str]:
    """Sample ingress and worker while the gateway serves non-streaming chat, at each concurrency in `rps`.

    `rps` (the measured rate at that concurrency) sizes each run to outlast the sampling.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    summaries: dict[str, str] = {}
    for c, rate in rps.items():
        requests = int(rate * (seconds + 4))
        run = LoadRun(
            f"profile:chat@{c}", stack.ingress_port, "POST", CHAT_PATH, json.dumps(CHAT), c, requests, 0
        )
        loadgen = procs.start_piped("loadgen", [sys.executable, "-m", "bench.loadgen"], cwd=ROOT)
        assert loadgen.stdin is not None and loadgen.stdout is not None
        loadgen.stdin.write(json.dumps(asdict(Plan(stack.host, headers, {}, [run]))).encode())
        loadgen.stdin.close()
        time.sleep(2)  # past the load generator's start-up
        spies = {
            name: procs.start_piped(
                f"py-spy-{name}", _py_spy(stack.pids[name], seconds, out_dir / f"{name}-c{c}.txt")
            )
            for name in ("ingress", "worker")
        }
        for name, spy in spies.items():
            spy.communicate()
            procs.forget(f"py-spy-{name}")
            summary = render_profile(load_profile(out_dir / f"{name}-c{c}.txt"), top=25)
            (out_dir / f"{name}-c{c}-summary.txt").write_text(summary + "\n")
            summaries[f"{name}, chat, c={c}"] = summary
        loadgen.stdout.read()  # its figures are not reported: sampling disturbs them
        loadgen.wait()
        procs.forget("loadgen")
    return summaries


def _py_spy(pid: int, seconds: float, output: Path) -> list[str]:
    # --nonblocking: never pause the process, so sampling does not itself add latency.
    options = f"--pid {pid} --duration {seconds:g} --rate 250 --nonblocking --format raw --output"
    return ["py-spy", "record", *options.split(), str(output)]
