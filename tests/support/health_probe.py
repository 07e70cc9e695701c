"""Latencies of /healthz measured while a test puts load on an ingress.

The probe runs in its own process: in the test's process it would share the GIL with the threads
that generate the load (a 50 MB multipart upload) and measure them, not the server.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import threading
import time
from typing import Self

import httpx
import orjson


class HealthProbe:
    """Polls /healthz every 20 ms on its own connection, from a child process, until the block ends."""

    def __init__(self, gateway: str) -> None:
        self._url = gateway.removesuffix("/v1") + "/healthz"
        self.latencies: list[float] = []
        self.started_at: list[float] = []  # time.monotonic() of each probe (the same clock here)
        self.failures = 0
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.health_probe", self._url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self._proc.stdout is not None
        self._proc.stdout.readline()  # "ready": connected, probing from now on
        return self

    def __exit__(self, *_: object) -> None:
        assert self._proc is not None
        out, _ = self._proc.communicate(b"stop\n", timeout=30)
        result = orjson.loads(out)
        self.started_at, self.latencies, self.failures = result["at"], result["ms"], result["failures"]

    def p99(self) -> float:
        return statistics.quantiles(self.latencies, n=100)[98]


def _run(url: str) -> None:
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
    at: list[float] = []
    ms: list[float] = []
    failures = 0
    with httpx.Client(timeout=5) as client:
        client.get(url)  # not counted: the first request also measures this process's own imports
        print("ready", flush=True)
        while not stop.is_set():
            at.append(time.monotonic())
            started = time.perf_counter()
            try:
                ok = client.get(url).status_code == 200
            except httpx.HTTPError:
                ok = False
            ms.append((time.perf_counter() - started) * 1000)
            failures += not ok
            stop.wait(0.02)
    sys.stdout.write(orjson.dumps({"at": at, "ms": ms, "failures": failures}).decode())


if __name__ == "__main__":
    _run(sys.argv[1])
