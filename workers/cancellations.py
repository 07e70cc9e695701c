"""Cancellation: the ingress broadcasts `<ns>.cancel.<request>`; the worker running it stops.

Every worker remembers recent cancellations for a while, so a request that JetStream redelivers
after it was cancelled is dropped on pick-up instead of run for nobody.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from dispatcher.bus.subjects import Subjects

_MEMORY = 100_000


class Cancellations:
    def __init__(self, nc: NATS, subjects: Subjects, remember_s: float = 900.0) -> None:
        self._nc = nc
        self._subjects = subjects
        self._remember_s = remember_s
        self._running: dict[str, set[asyncio.Task[Any]]] = {}  # several deliveries may run at once
        self._recent: OrderedDict[str, float] = OrderedDict()
        self.cancelled_running = 0

    async def start(self) -> None:
        await self._nc.subscribe(self._subjects.all_cancels, cb=self._on_cancel)

    def is_cancelled(self, request_id: str) -> bool:
        expiry = self._recent.get(request_id)
        return expiry is not None and expiry > time.monotonic()

    def track(self, request_id: str, task: asyncio.Task[Any]) -> None:
        self._running.setdefault(request_id, set()).add(task)

    def untrack(self, request_id: str, task: asyncio.Task[Any]) -> None:
        running = self._running.get(request_id)
        if running is not None:
            running.discard(task)
            if not running:
                del self._running[request_id]

    async def _on_cancel(self, msg: Msg) -> None:
        try:
            request_id = self._subjects.request_id_from(msg.subject)
        except ValueError:
            return
        self._recent[request_id] = time.monotonic() + self._remember_s
        self._recent.move_to_end(request_id)
        while len(self._recent) > _MEMORY:
            self._recent.popitem(last=False)
        for task in list(self._running.get(request_id, ())):
            if not task.done():
                self.cancelled_running += 1
                task.cancel()
