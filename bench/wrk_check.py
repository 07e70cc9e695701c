"""wrk, a load generator written in C, re-measuring non-streaming runs: a cross-check on the Python client.

A Python load generator spends CPU of its own on every request; when wrk (if installed) agrees
with it, the gateway's figures are not an artefact of the client.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.cpu import CpuUsage
from bench.stack import Stack

_WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = [==[{body}]==]
{headers}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {{"requests":%d,"duration_us":%d,"errors":%d,"status_errors":%d,' ..
    '"p50_us":%d,"p99_us":%d}}\\n', summary.requests, summary.duration,
    e.connect + e.read + e.write + e.timeout, e.status, latency:percentile(50), latency:percentile(99)))
end
"""


def run_wrk(
    stack: Stack,
    targets: Sequence[tuple[str, str, Mapping[str, object]]],
    concurrencies: Sequence[int],
    seconds: float,
    headers: Mapping[str, str],
    workdir: Path,
) -> dict[str, Any]:
    """Each (name, path, body) in `targets` at each concurrency, direct to the simulator and through the gateway."""
    results: dict[str, Any] = {}
    lua_headers = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
    for name, path, body in targets:
        script = workdir / f"wrk-{name}.lua"
        script.write_text(_WRK_SCRIPT.format(body=json.dumps(body), headers=lua_headers))
        for c in concurrencies:
            for via, port in (("direct", stack.simulator_port), ("gateway", stack.ingress_port)):
                options = f"-t1 -c{c} -d{seconds:g}s --timeout 10s -s {script}"
                argv = ["wrk", *options.split(), f"http://{stack.host}:{port}{path}"]
                result = _wrk_once(argv, stack.watch)
                results[f"{name}@{c}/{via}"] = result
                print(f"  wrk {name}@{c}/{via:<8} p50 {result['p50_ms']:6.2f} ms", file=sys.stderr)
    return results


def _wrk_once(argv: list[str], watch: dict[str, list[int]]) -> dict[str, Any]:
    usage = CpuUsage(watch)
    wrk_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    wall = time.perf_counter() - began
    usage.stop()
    wrk_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_cpu = (wrk_after.ru_utime + wrk_after.ru_stime) - (wrk_before.ru_utime + wrk_before.ru_stime)
    raw = json.loads(out.split("WRKJSON ", 1)[1].splitlines()[0])
    return {
        "p50_ms": raw["p50_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "rps": raw["requests"] / (raw["duration_us"] / 1e6),
        "errors": raw["errors"] + raw["status_errors"],
        # CPU other processes took meanwhile (wrk's own excluded): high means the figures are suspect.
        "foreign_cores": max(0.0, usage.foreign - wrk_cpu) / wall,
    }
