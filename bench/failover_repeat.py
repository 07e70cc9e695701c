"""Run the full fail-over test N times in a row and tabulate every run's outcome.

    python bench/failover_repeat.py --runs 10 [--soak] > failover-runs.md

Each run is `pytest tests/e2e/test_failover.py` (3-node R3 cluster; stream leader, ingress
and worker killed -9, Postgres stopped 10 s (120 s with --soak), under mixed load) in a fresh process. Prints a Markdown
table of outcomes per run: a test that fails one run in ten has found a bug.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _figures(report: str) -> dict[str, str]:
    whole = re.search(r"\| \*\*whole run\*\* \| (\d+) \| (\d+) \| (\d+) \| (\d+) \| (\d+) \|", report)
    counts = re.search(
        r"lost: \*\*(\d+)\*\*, duplicated: \*\*(\d+)\*\*, requests that needed a retry: (\d+)", report
    )
    unaudited = re.search(r"answers without exactly one audit row: (\d+) of (\d+)", report)
    figures: dict[str, str] = {}
    if whole:
        figures.update(sent=whole[1], ok=whole[2], clean=whole[3], bad=whole[4], p99=whole[5])
    if counts:
        figures.update(lost=counts[1], duplicated=counts[2], retried=counts[3])
    if unaudited:
        figures.update(unaudited=f"{unaudited[1]} of {unaudited[2]}")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--soak", action="store_true", help="longer fault windows (MODELBUS_SOAK=1)")
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="modelbus-failover-runs-"))
    columns = ("sent", "ok", "clean", "bad", "lost", "duplicated", "retried", "unaudited", "p99")
    print(f"| run | result | {' | '.join(columns)} | minutes |")
    print("|---" * (len(columns) + 3) + "|")
    for run in range(1, args.runs + 1):
        report = out / f"run-{run}.md"
        env = {**os.environ, "MODELBUS_HA_REPORT": str(report), "MODELBUS_SOAK": "1" if args.soak else "0"}
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
             "tests/e2e/test_failover.py"],
            cwd=ROOT, env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        (out / f"run-{run}.log").write_text(result.stdout + result.stderr)
        figures = _figures(report.read_text()) if report.exists() else {}
        verdict = "passed" if result.returncode == 0 else "FAILED"
        cells = " | ".join(figures.get(c, "-") for c in columns)
        print(f"| {run} | {verdict} | {cells} | {(time.monotonic() - started) / 60:.1f} |", flush=True)
    print(f"\nlogs and reports: {out}")


if __name__ == "__main__":
    main()
