"""The webhook delivery service: a durable consumer of queued webhooks, apart from the task collector.

For each queued webhook: read the task, wait for a slot of its destination, ask the destination's
circuit breaker, make one attempt, and record the outcome on the task (KV, then Postgres) for its
owner to see. A failed attempt is put back with exponential backoff (a nak with delay) until
`webhook_attempts` are used up; then, or at once for a forbidden address, the webhook is
dead-lettered: recorded as such on the task and in the audit log. The message is acked only after a
terminal outcome is recorded, so a crash at any point leaves it to be delivered again, never lost.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from dispatcher.audit.publisher import AuditPublisher
from dispatcher.bus.bus_settings import BusSettings
from dispatcher.bus.connection import fetch_or_wait
from dispatcher.bus.subjects import Subjects
from dispatcher.bus.topology import webhook_consumer_config
from dispatcher.errors import TaskChanged, WebhookRefused
from dispatcher.jobs.task_recorder import TaskRecorder
from dispatcher.jobs.task_store import TaskStore
from dispatcher.webhooks.addresses import WebhookPolicy
from dispatcher.webhooks.breaker import CircuitBreaker, DestinationSlots
from dispatcher.webhooks.sender import Attempt, WebhookSender
from schemas.audit import AuditEvent, AuditStatus
from schemas.tasks import Task, WebhookDelivery, WebhookState

log = logging.getLogger(__name__)
_IN_FLIGHT = 256  # webhooks held at once, over all destinations (most wait for a slot)
_CAS_ATTEMPTS = 5
_TERMINAL = (WebhookState.DELIVERED, WebhookState.DEAD_LETTERED)


class WebhookService:
    def __init__(
        self,
        nc: NATS,
        subjects: Subjects,
        store: TaskStore,
        recorder: TaskRecorder,
        audit: AuditPublisher,
        sender: WebhookSender,
        policy: WebhookPolicy,
        settings: BusSettings,
    ) -> None:
        self._nc = nc
        self._subjects = subjects
        self._store = store
        self._recorder = recorder
        self._audit = audit
        self._sender = sender
        self._policy = policy
        self._settings = settings
        self._breaker = CircuitBreaker(settings.webhook_breaker_failures, settings.webhook_breaker_cooldown_s)
        self._slots = DestinationSlots(settings.webhook_per_destination)
        self._running: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event) -> None:
        js = self._nc.jetstream()
        # Like the task collector's: the dispatcher owns this consumer whatever manage_topology says.
        config = webhook_consumer_config(self._subjects, self._settings)
        await js.add_consumer(self._subjects.webhook_stream, config)
        sub = await js.pull_subscribe_bind(self._subjects.webhook_consumer, self._subjects.webhook_stream)
        try:
            while not stop.is_set():
                room = _IN_FLIGHT - len(self._running)
                if room <= 0:
                    await asyncio.wait(self._running, timeout=1, return_when=asyncio.FIRST_COMPLETED)
                    continue
                for msg in await fetch_or_wait(sub, min(room, 64), timeout=self._settings.idle_pull_s):
                    task = asyncio.create_task(self._handle(msg))
                    self._running.add(task)
                    task.add_done_callback(self._running.discard)
        finally:
            # Unacked webhooks come back after the ack wait (to this process restarted, or a replica).
            for task in self._running:
                task.cancel()
            await asyncio.gather(*self._running, return_exceptions=True)
            await sub.unsubscribe()

    async def aclose(self) -> None:
        await self._sender.aclose()

    async def _handle(self, msg: Msg) -> None:
        keepalive = asyncio.create_task(_keep_alive(msg, self._settings.webhook_ack_wait_s / 3))
        try:
            delay = await self.deliver(self._subjects.request_id_from(msg.subject))
            if delay is None:
                await msg.ack()
            else:
                await msg.nak(delay=delay)
        except Exception as exc:  # noqa: BLE001 - KV, Postgres or broker trouble: try again soon
            log.warning("webhook not handled yet (%s); redelivering", type(exc).__name__)
            try:
                await msg.nak(delay=5)
            except Exception:  # noqa: BLE001 - then the ack wait redelivers it
                log.debug("nak failed; the ack wait will redeliver")
        finally:
            keepalive.cancel()

    async def deliver(self, task_id: str) -> float | None:
        """One attempt for the task's webhook, recorded. None: done (ack); else retry after seconds."""
        task = await self._store.get(task_id)
        if task is None or not task.webhook_url:
            log.error("webhook for unknown task %s dropped", task_id)
            return None
        status = task.webhook or WebhookDelivery()
        if status.state in _TERMINAL:
            return None  # a replayed queue message: already done
        attempt = await self._attempt(task, task.webhook_url)
        attempts = status.attempts + 1
        now = int(time.time())
        if attempt.ok:
            state = WebhookState.DELIVERED
        elif attempt.permanent or attempts >= self._settings.webhook_attempts:
            state = WebhookState.DEAD_LETTERED
        else:
            state = WebhookState.RETRYING
        task.webhook = WebhookDelivery(
            state=state,
            attempts=attempts,
            last_error=attempt.reason,
            last_attempt_at=now,
            delivered_at=now if attempt.ok else None,
        )
        await self._record(task)
        if state is WebhookState.RETRYING:
            return self._backoff(attempts)
        self._audit.emit(webhook_event(task, self._destination(task.webhook_url)))
        if state is WebhookState.DEAD_LETTERED:
            log.warning(
                "webhook of task %s dead-lettered after %d attempts: %s", task.id, attempts, attempt.reason
            )
        return None

    async def _attempt(self, task: Task, url: str) -> Attempt:
        destination = self._destination(url)
        async with self._slots.hold(destination):
            if not self._breaker.allow(destination):
                return Attempt(False, "circuit open")
            public = task.public()
            public.pop("webhook", None)  # the receiver gets the task, not our bookkeeping
            attempt = await self._sender.post(url, task.id, orjson.dumps(public))
        if attempt.ok:
            self._breaker.succeeded(destination)
        elif not attempt.permanent:
            self._breaker.failed(destination)
        return attempt

    def _destination(self, url: str) -> str:
        try:
            return self._policy.check_url(url).key
        except WebhookRefused:
            return "refused"  # the sender refuses it again, permanently, without a connection

    def _backoff(self, attempts: int) -> float:
        """Exponential, capped, with jitter so a destination's retries do not arrive in step."""
        base: float = self._settings.webhook_backoff_s * 2.0 ** (attempts - 1)
        return min(base, self._settings.webhook_max_backoff_s) * random.uniform(0.8, 1.2)

    async def _record(self, task: Task) -> None:
        """The outcome on the KV entry (compare-and-set: only the webhook state changes), then the row."""
        for _ in range(_CAS_ATTEMPTS):
            found = await self._store.get_versioned(task.id)
            revision = found[1] if found is not None else None
            try:
                await self._store.update(task, revision)
                break
            except TaskChanged:
                continue
        else:
            raise TaskChanged(task.id)
        await self._recorder.persist(task)


async def _keep_alive(msg: Msg, every_s: float) -> None:
    """A webhook may wait for its destination's slot longer than the ack wait; say it is in hand."""
    while True:
        await asyncio.sleep(every_s)
        try:
            await msg.in_progress()
        except Exception:  # noqa: BLE001 - the broker is away; the next one may get through
            log.debug("in-progress ack failed")


def webhook_event(task: Task, destination: str) -> AuditEvent:
    """The audit row of a webhook's terminal outcome: data left the gateway (or never did), and where.

    The destination is scheme://host:port only: a URL's path or query may carry the receiver's token."""
    status = task.webhook or WebhookDelivery()
    delivered = status.state is WebhookState.DELIVERED
    return AuditEvent(
        event_id=f"{task.request_id}.webhook",
        request_id=task.request_id,
        kind="batch" if task.batch_id else "async",
        endpoint="webhook",
        status=AuditStatus.SERVED if delivered else AuditStatus.FAILED,
        http_status=200 if delivered else 502,
        error_code=None if delivered else "webhook_dead_lettered",
        error_message=status.last_error,
        consumer=task.consumer,
        key_id=task.key_id,
        model_served=task.model,
        input={"destination": destination, "attempts": status.attempts},
        received_ms=task.created_at * 1000,
        finished_ms=int(time.time() * 1000),
    )
