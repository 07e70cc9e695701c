"""The audit sink: JetStream → Postgres in batches, idempotent, acked only after commit.

After each commit the sink signs the chain head it reached and keeps it in NATS KV
(dispatcher/audit/checkpoints.py), so rows removed from the end of the table later do not go
unnoticed. While Postgres is down the sink holds its current batch (keeping it alive with in-progress acks)
and retries; everything else waits in the audit stream, so nothing is lost and the gateway keeps
serving. When Postgres returns the backlog drains at batch speed.
"""

from __future__ import annotations

import asyncio
import logging
import time

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext
from pydantic import ValidationError

from dispatcher.audit.checkpoints import Checkpointer
from dispatcher.audit.ledger import AuditStore
from dispatcher.bus.connection import fetch_or_wait
from dispatcher.bus.subjects import Subjects
from dispatcher.bus.topology import audit_sink_consumer_config
from schemas.audit import AuditEvent

log = logging.getLogger(__name__)


class AuditSink:
    def __init__(
        self,
        nc: NATS,
        subjects: Subjects,
        store: AuditStore,
        checkpointer: Checkpointer | None,
        batch_size: int = 1000,
        linger_s: float = 0.05,
        idle_pull_s: float = 1.0,
    ) -> None:
        self._nc = nc
        self._idle_pull_s = idle_pull_s
        self._linger_s = linger_s
        self._subjects = subjects
        self._store = store
        self._checkpointer = checkpointer  # None: no signing key configured (verify says so)
        self._batch_size = batch_size
        self.written = 0
        self.failures = 0

    async def run(self, stop: asyncio.Event) -> None:
        js = self._nc.jetstream()
        await js.add_consumer(self._subjects.audit_stream, audit_sink_consumer_config(self._subjects))
        sub = await js.pull_subscribe_bind(self._subjects.audit_sink_consumer, self._subjects.audit_stream)
        try:
            while not stop.is_set():
                msgs = await fetch_or_wait(sub, self._batch_size, timeout=self._idle_pull_s)
                if msgs and len(msgs) < self._batch_size and self._linger_s > 0:
                    msgs += await self._more(sub, self._batch_size - len(msgs))
                if msgs:
                    await self._write(msgs)
        finally:
            # Late pull statuses left in a pull subscription would make the connection's drain wait.
            await sub.unsubscribe()

    async def _more(self, sub: JetStreamContext.PullSubscription, room: int) -> list[Msg]:
        """What arrives within the linger after a short batch.

        A fetch returns as soon as anything is there, so under steady traffic each batch held a few
        events and paid a transaction, a signed checkpoint and a KV write for them: most of the
        dispatcher's CPU per request. Waiting a few tens of milliseconds costs only audit latency.
        """
        await asyncio.sleep(self._linger_s)
        return await fetch_or_wait(sub, room, timeout=0.01)

    async def _write(self, fetched: list[Msg]) -> None:
        events: list[AuditEvent] = []
        msgs: list[Msg] = []
        for msg in fetched:
            try:
                events.append(AuditEvent.model_validate_json(msg.data))
                msgs.append(msg)
            except ValidationError:
                log.error("undecodable audit event dropped (stream seq %s)", msg.metadata.sequence.stream)
                await msg.term()
        delay, last_progress = 0.2, time.monotonic()
        while True:
            try:
                added = await self._store.append(events)
                break
            except Exception as exc:  # noqa: BLE001 - database trouble: keep the batch and retry
                self.failures += 1
                log.warning(
                    "audit batch of %d not written yet: %s: %s",
                    len(events),
                    type(exc).__name__,
                    str(exc)[:300],
                )
                if time.monotonic() - last_progress > 15:
                    await asyncio.gather(*(m.in_progress() for m in msgs))
                    last_progress = time.monotonic()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        self.written += added
        if added and self._checkpointer is not None and self._store.last_head is not None:
            # Before the acks: a head committed but never signed would be one truncation could hide.
            await self._checkpointer.record(*self._store.last_head)
        await asyncio.gather(*(m.ack() for m in msgs))
