"""Accepting async work: `POST /v1/tasks`, or any inference call with `Prefer: respond-async`.

A task is recorded in the task bucket, then its request is queued like any other with its replies
addressed to the task stream instead of this ingress; from then on it no longer depends on this
process. `Idempotency-Key` makes a retried submission return the task it already created.
"""

from __future__ import annotations

import re
import time
import uuid

import orjson
from fastapi import Request
from starlette.responses import Response

from dispatcher.admission.admitted import Admitted, envelope_for
from dispatcher.admission.identity import Identity
from dispatcher.bus.client import BusClient
from dispatcher.bus.subjects import Subjects
from dispatcher.jobs.task_store import TaskStore
from ingress.audit_events import draft_of
from ingress.error_responses import APIError
from schemas.tasks import Task, TaskStatus

_MAX_IDEMPOTENCY_KEY = 255
# Task ids the gateway hands out: `task_<32 hex>`, or `task_<32 hex>_<line>` for a batch line.
_TASK_ID = re.compile(r"^task_[0-9a-f]{32}(?:_[0-9]{1,6})?$")


def wants_async(request: Request) -> bool:
    prefer = request.headers.get("prefer", "")
    return any(part.strip().lower() == "respond-async" for part in prefer.split(","))


class TaskIntake:
    def __init__(
        self,
        bus: BusClient,
        store: TaskStore,
        subjects: Subjects,
        timeout_s: float,
        duplicate_window_s: float,
    ) -> None:
        self._bus = bus
        self._store = store
        self._subjects = subjects
        self._timeout_s = timeout_s
        # A replayed submission may publish again only while the stream still dedupes it.
        self._republish_s = duplicate_window_s / 2

    async def accept(self, request: Request, admitted: Admitted, webhook_url: str | None = None) -> Response:
        """Record an admitted request as a task and queue it; 202 with the task."""
        identity = admitted.identity
        task_id = "task_" + uuid.uuid4().hex
        existing: Task | None = None
        key = request.headers.get("idempotency-key")
        if key is not None:
            if not key or len(key) > _MAX_IDEMPOTENCY_KEY:
                raise APIError(400, "Idempotency-Key must be 1 to 255 characters", "invalid_header")
            claimed = await self._store.claim(identity.consumer, key, task_id)
            if claimed != task_id:
                existing = await self._store.get(claimed)
                if existing is not None and (
                    existing.status is not TaskStatus.QUEUED
                    or time.time() - existing.created_at > self._republish_s
                ):
                    return _accepted(existing, request, replayed=True)
                # The first attempt may have failed between its claim and its publish (a broker
                # fail-over answered 503): finish it under the same id. Should its publish have
                # landed after all, the stream drops this one as a duplicate (same Nats-Msg-Id).
                task_id = claimed
        now_ms = int(time.time() * 1000)
        draft = draft_of(request)
        task = Task(
            id=task_id,
            status=TaskStatus.QUEUED,
            endpoint=admitted.spec.task_name,
            model=admitted.target.name,
            consumer=identity.consumer,
            key_id=identity.key_id,
            created_at=now_ms // 1000,
            webhook_url=webhook_url,
            request_id=task_id,
            deadline_ms=now_ms + int(self._timeout_s * 1000),
            request=admitted.payload,
            policy_actions=list(draft.policy_actions) if draft is not None else [],
        )
        if existing is None:
            await self._store.create_once(task)
        else:
            task = existing
        envelope = envelope_for(
            admitted,
            task_id,
            reply_to=self._subjects.task_reply(task_id),
            created_ms=now_ms,
            deadline_ms=task.deadline_ms,
            traceparent=request.headers.get("traceparent"),
        )
        await self._bus.enqueue(envelope, admitted.body)
        if draft is not None:
            draft.deferred = True  # the collector writes this task's audit row when it finishes
        return _accepted(task, request, replayed=existing is not None)

    async def status(self, task_id: str, identity: Identity) -> Task:
        task = await self._store.get(task_id) if _TASK_ID.match(task_id) else None
        if task is None or task.consumer != identity.consumer:
            # Someone else's task, or an id we never issue, is indistinguishable from none at all.
            raise APIError(404, f"no task {task_id!r}", "task_not_found", "task_id")
        if task.status in (TaskStatus.QUEUED, TaskStatus.RUNNING) and time.time() * 1000 > task.deadline_ms:
            task.status = TaskStatus.FAILED
        return task


def _accepted(task: Task, request: Request, replayed: bool) -> Response:
    headers = {"Location": f"/v1/tasks/{task.id}"}
    if wants_async(request):
        headers["Preference-Applied"] = "respond-async"
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return Response(
        orjson.dumps(task.public()), status_code=202, media_type="application/json", headers=headers
    )
