"""Supervised background work: every long-running task of a process has an owner that restarts it.

A watcher that dies (its KV bucket deleted, a NATS error it did not expect) is logged at ERROR with
its name, marked down in `modelbus_background_task_up` and in `/readyz`, and started again with
exponential backoff; one that ends by itself is restarted too, since none of them is meant to.
Shutdown cancels and awaits them all.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from dispatcher.telemetry import metrics

log = logging.getLogger(__name__)

_FIRST_BACKOFF_S = 0.5
_MAX_BACKOFF_S = 30.0
# A task that ran this long before failing is considered to have been healthy: back off from scratch.
_HEALTHY_AFTER_S = 60.0


class Supervisor:
    def __init__(self, component: str) -> None:
        self._component = component
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._graceful: set[str] = set()
        self._down: set[str] = set()
        self._stopping = False
        self.restarts: dict[str, int] = {}
        # Consumer loops watch this between batches and return when it is set, at shutdown.
        self.stopping = asyncio.Event()

    def supervise(self, name: str, run: Callable[[], Awaitable[None]], *, graceful: bool = False) -> None:
        """Run `run()` until shutdown, restarting it whenever it raises or returns.

        `graceful`: the task watches `stopping` and returns by itself after its current batch (a
        consumer loop whose messages should be acked, not redelivered); at shutdown it gets the grace
        period. Every other task is cancelled at once."""
        if name in self._tasks:
            raise ValueError(f"a background task named {name!r} is already supervised")
        if graceful:
            self._graceful.add(name)
        self.restarts[name] = 0
        self._tasks[name] = asyncio.create_task(self._keep(name, run), name=f"{self._component}:{name}")

    @property
    def down(self) -> list[str]:
        """Tasks that are not running right now (waiting to be restarted)."""
        return sorted(self._down)

    async def aclose(self, grace_s: float = 0.0) -> None:
        """Stop everything: graceful tasks get up to `grace_s` to finish their batch, the rest (and
        graceful ones that overrun) are cancelled."""
        self._stopping = True
        self.stopping.set()
        tasks = list(self._tasks.values())
        for name, task in self._tasks.items():
            if name not in self._graceful:
                task.cancel()
        graceful = [task for name, task in self._tasks.items() if name in self._graceful]
        if graceful and grace_s > 0:
            await asyncio.wait(graceful, timeout=grace_s)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()

    async def _keep(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        up = metrics.BACKGROUND_UP.labels(self._component, name)
        backoff = _FIRST_BACKOFF_S
        while True:
            started = time.monotonic()
            self._down.discard(name)
            up.set(1)
            try:
                await run()
                if self._stopping:
                    return
                reason = "it returned"
            except asyncio.CancelledError:
                up.set(0)
                raise
            except Exception as exc:  # noqa: BLE001 - whatever killed it, the task must come back
                reason = f"{type(exc).__name__}: {exc}"
            self._down.add(name)
            up.set(0)
            if time.monotonic() - started > _HEALTHY_AFTER_S:
                backoff = _FIRST_BACKOFF_S
            log.error(
                "%s background task %r stopped (%s); restarting in %.1f s",
                self._component,
                name,
                reason,
                backoff,
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF_S)
            self.restarts[name] += 1
            metrics.BACKGROUND_RESTARTS.labels(self._component, name).inc()
