"""Facts about the machine a benchmark ran on, and whether anything else was busy on it."""

from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
import time
from importlib import metadata
from pathlib import Path

from bench.cpu import cpu_seconds
from modelbus.embedded_nats import nats_server_binary

ROOT = Path(__file__).resolve().parents[1]
GATEWAY_PACKAGES = ("schemas", "dispatcher", "ingress", "workers", "simulator", "modelbus", "pyproject.toml")
PACKAGES = ("uvicorn", "fastapi", "starlette", "pydantic", "nats-py", "aiohttp", "uvloop", "httptools")


def busy_neighbours(ours: set[int], sample_s: float = 1.0) -> list[str]:
    """Other processes that used over 5 % of a CPU in the last second: they make figures noisier."""

    def snapshot() -> dict[int, float]:
        usage = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) not in ours and int(entry.name) != os.getpid():
                try:
                    usage[int(entry.name)] = cpu_seconds(int(entry.name))
                except OSError:
                    pass  # exited meanwhile
        return usage

    before = snapshot()
    time.sleep(sample_s)
    after = snapshot()
    busy = []
    for pid, used in after.items():
        share = (used - before.get(pid, used)) / sample_s
        if share > 0.05:
            try:
                command = (
                    Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                )
            except OSError:
                continue  # exited meanwhile
            busy.append(f"{command.strip()[:80]} ({share:.0%})")
    return busy


def machine_facts(wrk: bool) -> dict[str, str]:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    nats_version = subprocess.run(
        [str(nats_server_binary()), "--version"], check=False, capture_output=True, text=True
    ).stdout
    facts = {
        "date": datetime.date.today().isoformat(),
        "nproc": subprocess.run(["nproc"], check=False, capture_output=True, text=True).stdout.strip()
        or str(os.cpu_count()),
        "cpu": model.group(1).strip() if model else platform.processor(),
        "memory": _memory(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "nats-server": nats_version.strip(),
        "modelbus commit": _commit(),
        "load average before the run": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    }
    for package in PACKAGES:
        facts[package] = metadata.version(package)
    if wrk:
        facts["wrk"] = subprocess.run(
            ["wrk", "--version"], check=False, capture_output=True, text=True
        ).stdout.split(" [")[0]
    return facts


def _commit() -> str:
    """HEAD, and whether the gateway's own code differs from it."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, check=False, capture_output=True, text=True
        ).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    changed = git("status", "--porcelain", "--", *GATEWAY_PACKAGES)
    return f"{head} (+ uncommitted changes)" if changed else head


def _memory() -> str:
    meminfo = Path("/proc/meminfo")
    if not meminfo.exists():
        return "?"
    kib = int(re.search(r"MemTotal:\s+(\d+)", meminfo.read_text()).group(1))  # type: ignore[union-attr]
    return f"{kib / 1024 / 1024:.0f} GiB"
