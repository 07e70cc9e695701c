"""Recording how a task ended, everywhere it must go: the KV entry (what readers see at once), the
`tasks` row in Postgres (the record; the last line of a batch finalizes it), the task's one audit
event, and its webhook's place in the delivery queue (delivery itself runs apart, in
dispatcher/webhooks/delivery.py, so no receiver can slow this down). Used by the collector (a worker answered) and the batch feeder (admission
refused a line, which then never reaches a model).

Every step is idempotent — the row is upserted, the audit event keeps the task's id, the webhook's
queue message its `Nats-Msg-Id` — so a frame
redelivered after a partial failure finishes the job instead of doing it twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Literal

import orjson

from dispatcher.audit.chain import prompt_hash
from dispatcher.audit.publisher import AuditPublisher
from dispatcher.bus.reply_stream import Frame
from dispatcher.errors import Refused
from dispatcher.jobs.batch_store import BatchStore
from dispatcher.jobs.task_store import TaskStore
from dispatcher.webhooks.queue import WebhookQueue
from schemas.audit import AuditEvent, AuditStatus
from schemas.endpoints import BY_TASK_NAME
from schemas.envelope import ErrorFrame, FinalFrame
from schemas.tasks import Task, TaskError, TaskStatus, WebhookDelivery

log = logging.getLogger(__name__)


class TaskRecorder:
    def __init__(
        self,
        store: TaskStore,
        audit: AuditPublisher,
        webhooks: WebhookQueue | None,
        batches: BatchStore | None,
    ) -> None:
        self._store = store
        self._audit = audit
        self._webhooks = webhooks
        self._batches = batches

    async def finish(self, task: Task, frame: Frame, payload: bytes, revision: int | None) -> None:
        """A worker's final or error frame: the task's outcome. `revision` is the KV revision the task
        was read at (TaskChanged if it moved on: the caller reads it again)."""
        task.completed_at = int(time.time())
        if isinstance(frame, FinalFrame):
            task.status, task.result = TaskStatus.COMPLETED, orjson.loads(payload) if payload else None
        elif isinstance(frame, ErrorFrame):
            task.status = TaskStatus.FAILED
            task.error = TaskError(
                code=frame.client_code, message=frame.message, status=frame.status, param=frame.param
            )
        if task.webhook_url:
            task.webhook = WebhookDelivery()
        await self._store.update(task, revision)
        await self.record(task, frame)

    async def record(self, task: Task, frame: Frame) -> None:
        """Postgres and the audit event of a task whose outcome is already in KV (also on a replay)."""
        await self.persist(task)
        self._audit.emit(audit_event(task, frame))
        if task.webhook_url and self._webhooks is not None:
            await self._webhooks.enqueue(task.id)

    async def refuse(self, task: Task, refusal: Refused, status: AuditStatus = AuditStatus.REJECTED) -> None:
        """Admission refused the task: it fails with the error a synchronous call would have got."""
        task.status, task.completed_at = TaskStatus.FAILED, int(time.time())
        task.error = TaskError(
            code=refusal.code, message=refusal.message, status=refusal.status, param=refusal.param
        )
        await self._store.update(task)
        await self.persist(task)
        self._audit.emit(refusal_event(task, refusal.status, status))

    async def persist(self, task: Task) -> None:
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


def _kind(task: Task) -> Literal["async", "batch"]:
    return "batch" if task.batch_id else "async"


def _endpoint(task: Task) -> str:
    spec = BY_TASK_NAME.get(task.endpoint)
    return spec.audit_name if spec is not None else task.endpoint


def audit_event(task: Task, frame: Frame) -> AuditEvent:
    final = frame if isinstance(frame, FinalFrame) else None
    error = frame if isinstance(frame, ErrorFrame) else None
    request = task.request or {}
    usage = final.usage if final else None
    return AuditEvent(
        event_id=task.request_id,
        request_id=task.request_id,
        kind=_kind(task),
        endpoint=_endpoint(task),
        status=AuditStatus.SERVED if final else AuditStatus.FAILED,
        http_status=200 if final else (error.status if error else 502),
        error_code=error.client_code if error else None,
        error_message=error.message if error else None,
        consumer=task.consumer,
        key_id=task.key_id,
        model_requested=task.model_requested or task.model,
        model_served=task.model,
        worker=task.worker,
        input=request or None,
        output=task.result,
        prompt_hash=prompt_hash(request),
        finish_reason=final.finish_reason if final else None,
        policy_actions=[*task.policy_actions, *(final.guard_events if final else [])],
        prompt_tokens=usage.prompt_tokens if usage else None,
        completion_tokens=usage.completion_tokens if usage else None,
        total_tokens=usage.total_tokens if usage else None,
        received_ms=task.created_at * 1000,
        picked_up_ms=final.timings.picked_up_ms if final else None,
        first_token_ms=final.timings.first_token_ms if final else None,
        finished_ms=final.timings.finished_ms if final else int(time.time() * 1000),
    )


def refusal_event(task: Task, http_status: int, status: AuditStatus) -> AuditEvent:
    """A task admission refused: no model saw it, so the row holds no input (it may be what a
    guardrail blocked) and no output."""
    error = task.error
    return AuditEvent(
        event_id=task.request_id,
        request_id=task.request_id,
        kind=_kind(task),
        endpoint=_endpoint(task),
        status=status,
        http_status=http_status,
        error_code=error.code if error else None,
        error_message=error.message if error else None,
        consumer=task.consumer,
        key_id=task.key_id,
        model_requested=task.model_requested or task.model,
        policy_actions=list(task.policy_actions),
        received_ms=task.created_at * 1000,
        finished_ms=int(time.time() * 1000),
    )
