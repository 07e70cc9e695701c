"""The task collector: turns the reply frames of async tasks into task records, audit rows, webhooks.

Workers answer an async task on `<ns>.task.<id>`, which a JetStream stream keeps, so the answer
survives the ingress that accepted the task. The collector (a durable consumer shared by all
dispatcher replicas) records the outcome in KV and Postgres, publishes the task's one audit event,
calls the webhook, and only then acks. A redelivered request's second answer finds the task
already finished and is ignored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Literal

import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from pydantic import ValidationError

from dispatcher.audit.chain import prompt_hash
from dispatcher.audit.publisher import AuditPublisher
from dispatcher.batches import BatchStore
from dispatcher.connection import fetch_or_wait
from dispatcher.reply_stream import Frame, decode_frame
from dispatcher.subjects import Subjects
from dispatcher.tasks.store import TaskStore
from dispatcher.tasks.webhooks import WebhookSender
from dispatcher.topology import task_collector_consumer_config
from schemas.audit import AuditEvent, AuditStatus
from schemas.envelope import ErrorFrame, FinalFrame, StartFrame
from schemas.tasks import Task, TaskError, TaskStatus

log = logging.getLogger(__name__)
_PARALLEL = 32


class TaskCollector:
    def __init__(
        self,
        nc: NATS,
        subjects: Subjects,
        store: TaskStore,
        audit: AuditPublisher,
        webhooks: WebhookSender,
        batches: BatchStore | None = None,
    ) -> None:
        self._batches = batches
        self._nc = nc
        self._subjects = subjects
        self._store = store
        self._audit = audit
        self._webhooks = webhooks
        self._slots = asyncio.Semaphore(_PARALLEL)
        self._running: set[asyncio.Task[None]] = set()
        self.finished = 0

    async def run(self, stop: asyncio.Event) -> None:
        js = self._nc.jetstream()
        await js.add_consumer(
            self._subjects.task_reply_stream, task_collector_consumer_config(self._subjects)
        )
        sub = await js.pull_subscribe_bind(
            self._subjects.task_collector_consumer, self._subjects.task_reply_stream
        )
        try:
            while not stop.is_set():
                msgs = await fetch_or_wait(sub, _PARALLEL, timeout=1)
                # Frames of one task arrive in order within a fetch; handle each task's in order.
                by_task: dict[str, list[Msg]] = {}
                for msg in msgs:
                    by_task.setdefault(msg.subject, []).append(msg)
                for group in by_task.values():
                    await self._slots.acquire()
                    task = asyncio.create_task(self._handle_group(group))
                    self._running.add(task)
                    task.add_done_callback(self._running.discard)
        finally:
            if self._running:
                await asyncio.gather(*self._running, return_exceptions=True)
            # Late pull statuses left in a pull subscription would make the connection's drain wait.
            await sub.unsubscribe()

    async def _handle_group(self, msgs: list[Msg]) -> None:
        done = 0
        try:
            for msg in msgs:
                await self._handle(msg)
                await msg.ack()
                done += 1
        except Exception as exc:  # noqa: BLE001 - KV or broker trouble: have them back soon
            log.warning("task reply not recorded yet (%s); redelivering", type(exc).__name__)
            # Without a nak they would wait out the 120 s ack wait; in order, so frames stay ordered.
            for msg in msgs[done:]:
                try:
                    await msg.nak(delay=1)
                except Exception:  # noqa: BLE001 - then the ack wait redelivers them
                    break
        finally:
            self._slots.release()

    async def _handle(self, msg: Msg) -> None:
        task_id = self._subjects.request_id_from(msg.subject)
        try:
            frame, payload = decode_frame(msg.data)
        except (ValueError, ValidationError):
            log.error("undecodable reply frame for task %s dropped", task_id)
            return
        task = await self._store.get(task_id)
        if task is None:
            log.error("reply for unknown task %s dropped", task_id)
            return
        if task.status in (TaskStatus.COMPLETED, TaskStatus.FAILED):
            # The first answer stands. But this may be the same final frame again, redelivered because
            # recording it failed part-way (the status reached KV, then NATS or Postgres timed out):
            # finish the rest. Both steps are idempotent — the row is upserted, and the audit event
            # keeps its id, so the stream and the sink each keep one.
            if isinstance(frame, (FinalFrame, ErrorFrame)):
                await self._persist(task)
                self._audit.emit(audit_event(task, frame, "batch" if task.batch_id else "async"))
            return
        if isinstance(frame, StartFrame):
            task.status, task.started_at, task.worker = TaskStatus.RUNNING, int(time.time()), frame.worker
            await self._store.update(task)
        elif isinstance(frame, (FinalFrame, ErrorFrame)):
            await self._finish(task, frame, payload)

    async def _finish(self, task: Task, frame: Frame, payload: bytes) -> None:
        task.completed_at = int(time.time())
        if isinstance(frame, FinalFrame):
            task.status, task.result = TaskStatus.COMPLETED, orjson.loads(payload) if payload else None
        elif isinstance(frame, ErrorFrame):
            task.status = TaskStatus.FAILED
            task.error = TaskError(code=frame.code.value, message=frame.message, status=frame.status)
        await self._store.update(task)
        await self._persist(task)
        self._audit.emit(audit_event(task, frame, "batch" if task.batch_id else "async"))
        await self._webhooks.deliver(task)
        self.finished += 1

    async def _persist(self, task: Task) -> None:
        """Postgres may be down: keep trying (the KV record already answers readers meanwhile)."""
        delay = 0.2
        while True:
            try:
                await self._store.persist(task)
                if task.batch_id and self._batches is not None:
                    await self._batches.finalize_if_done(task.batch_id)
                return
            except Exception as exc:  # noqa: BLE001 - database trouble: retry
                log.warning("task %s not stored yet: %s", task.id, type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)


def audit_event(task: Task, frame: Frame, kind: Literal["async", "batch"] = "async") -> AuditEvent:
    final = frame if isinstance(frame, FinalFrame) else None
    error = frame if isinstance(frame, ErrorFrame) else None
    request = task.request or {}
    usage = final.usage if final else None
    return AuditEvent(
        event_id=task.request_id,
        request_id=task.request_id,
        kind=kind,
        endpoint=task.endpoint,
        status=AuditStatus.SERVED if final else AuditStatus.FAILED,
        http_status=200 if final else (error.status if error else 502),
        error_code=error.code.value if error else None,
        error_message=error.message if error else None,
        consumer=task.consumer,
        key_id=task.key_id,
        model_requested=task.model,
        model_served=task.model,
        worker=task.worker,
        input=request or None,
        output=task.result,
        prompt_hash=prompt_hash(request),
        finish_reason=final.finish_reason if final else None,
        policy_actions=list(final.guard_events) if final else [],
        prompt_tokens=usage.prompt_tokens if usage else None,
        completion_tokens=usage.completion_tokens if usage else None,
        total_tokens=usage.total_tokens if usage else None,
        received_ms=task.created_at * 1000,
        picked_up_ms=final.timings.picked_up_ms if final else None,
        first_token_ms=final.timings.first_token_ms if final else None,
        finished_ms=final.timings.finished_ms if final else int(time.time() * 1000),
    )
