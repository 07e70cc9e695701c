"""Publishing audit events to JetStream off the request path.

`emit()` never blocks or fails the request that produced the event: events queue in memory and a
background task publishes them, retrying with the same `Nats-Msg-Id` (the event id) until
JetStream confirms, so a retry is deduplicated rather than stored twice.
"""

from __future__ import annotations

import asyncio
import logging

from nats.js import JetStreamContext

from dispatcher.bus.subjects import Subjects
from schemas.audit import AuditEvent

log = logging.getLogger(__name__)

_CONCURRENT = 64


class AuditPublisher:
    def __init__(self, js: JetStreamContext, subjects: Subjects, source: str, backlog: int = 100_000) -> None:
        self._js = js
        self._subject = subjects.audit(source)
        self._queue: asyncio.Queue[AuditEvent] = asyncio.Queue(maxsize=backlog)
        self.published = 0
        self.dropped = 0

    def emit(self, event: AuditEvent) -> None:
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            # Only after a long broker outage; counted and logged so the gap is visible.
            self.dropped += 1
            log.error("audit backlog full: event %s dropped", event.event_id)

    @property
    def backlog(self) -> int:
        return self._queue.qsize()

    async def run(self) -> None:
        """Publish until cancelled; pending events are retried, never skipped."""
        while True:
            batch = [await self._queue.get()]
            while len(batch) < _CONCURRENT and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await asyncio.gather(*(self._publish(event) for event in batch))

    async def flush(self, timeout: float) -> None:
        """Best effort at shutdown: publish what is queued within `timeout`."""
        try:
            async with asyncio.timeout(timeout):
                while not self._queue.empty():
                    await self._publish(self._queue.get_nowait())
        except TimeoutError:
            log.error("audit flush timed out with %d events unpublished", self._queue.qsize())

    async def _publish(self, event: AuditEvent) -> None:
        data = event.model_dump_json().encode()
        delay = 0.1
        while True:
            try:
                await self._js.publish(
                    self._subject, data, timeout=5, headers={"Nats-Msg-Id": event.event_id}
                )
                self.published += 1
                return
            except Exception as exc:  # noqa: BLE001 - broker trouble: keep the event and retry
                log.warning("audit event %s not yet published: %s", event.event_id, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
