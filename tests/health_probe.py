"""Latencies of /healthz measured while a test puts load on an ingress."""

from __future__ import annotations

import statistics
import threading
import time
from typing import Self

import httpx


class HealthProbe:
    """Polls /healthz every 20 ms on its own connection and keeps the latencies."""

    def __init__(self, gateway: str) -> None:
        self._url = gateway.removesuffix("/v1") + "/healthz"
        self.latencies: list[float] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    ok = client.get(self._url).status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.latencies.append((time.perf_counter() - started) * 1000)
                self.failures += not ok
                self._stop.wait(0.02)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def p99(self) -> float:
        return statistics.quantiles(self.latencies, n=100)[98]
