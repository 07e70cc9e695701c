"""The batch feeder: admits each batch line when it runs, then queues it on the batch lane.

Creating a batch only checks its file and puts every line on the batch-line stream
(`<ns>.batchline.<batch>`, a work queue). The feeder — a durable pull consumer shared by all
dispatcher replicas — takes lines from there and sends each through the same admission as a direct
call, under the identity recorded when the batch was created, re-derived against the configuration
of now (a role or key taken away since then stops lines not yet run):

- admitted: the line becomes a task on the batch lane, with its quota hold and output guardrails;
- refused (RBAC, a guardrail, a day or month budget, a revoked key): the line fails with the error
  body a synchronous call would have got, which lands in the batch's error file;
- over a per-minute limit: the line goes back on its stream until there is room (a batch waits
  rather than fails on rate limits);
- its batch cancelled or past its completion window: the line fails without running.

A line is acked only once it is queued or recorded as failed, so a feeder that dies mid-line loses
nothing: the line comes back, and the queueing is deduplicated by its task id.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterable

import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from pydantic import ValidationError

from dispatcher.admission.admitted import envelope_for
from dispatcher.admission.identity import Identity, from_snapshot
from dispatcher.admission.pipeline import Admission, AuditNotes, Submission
from dispatcher.bus.client import BusClient
from dispatcher.bus.connection import fetch_or_wait, publish_durably
from dispatcher.bus.subjects import Subjects
from dispatcher.bus.topology import batch_feeder_consumer_config
from dispatcher.errors import (
    LimitsUnavailable,
    ModelbusError,
    OverLimit,
    Refused,
    Unauthenticated,
    Withdrawn,
)
from dispatcher.jobs.batch_store import BatchStore
from dispatcher.jobs.task_recorder import TaskRecorder
from dispatcher.jobs.task_store import TaskStore
from dispatcher.policy.api_keys import KeyRegistry, config_key_active
from schemas.audit import AuditStatus
from schemas.batches import IdentitySnapshot, QueuedLine
from schemas.endpoints import BY_PATH
from schemas.envelope import Lane
from schemas.tasks import Task, TaskStatus

log = logging.getLogger(__name__)

_PARALLEL = 64
_CACHE_S = 1.0  # how stale a batch's status or a key's validity may be when a line runs
_RETRY_S = 1.0  # a line whose queueing failed for want of the bus comes back this soon


def line_task_id(batch_id: str, index: int) -> str:
    return f"task_{batch_id.removeprefix('batch_')}_{index}"


async def queue_lines(
    js: JetStreamContext,
    subjects: Subjects,
    batch_id: str,
    messages: AsyncIterable[bytes],
    parallel: int = _PARALLEL,
) -> None:
    """Put a new batch's lines (serialized `QueuedLine`s, in index order) on its batch-line stream,
    each deduplicated by batch and line, so a retried publish never queues a line twice. Raises
    BusUnavailable or QueueFull.

    `parallel` publishers share one iterator: lines are made as they are sent (a 50,000-line batch
    is never all in memory, nor 50,000 tasks created at once)."""
    source = aiter(messages)
    lock = asyncio.Lock()
    counter = iter(range(1 << 62))
    subject = subjects.batch_lines(batch_id)

    async def publisher() -> None:
        while True:
            async with lock:  # one async generator is not safe to advance from two tasks at once
                message = await anext(source, None)
                index = next(counter)
            if message is None:
                return
            await publish_durably(js, subject, message, {"Nats-Msg-Id": f"{batch_id}:{index}"}, 10.0)

    await asyncio.gather(*(publisher() for _ in range(parallel)))


class BatchFeeder:
    def __init__(
        self,
        nc: NATS,
        subjects: Subjects,
        admission: Admission,
        bus: BusClient,
        tasks: TaskStore,
        recorder: TaskRecorder,
        batches: BatchStore,
        keys: KeyRegistry,
        idle_pull_s: float = 1.0,
    ) -> None:
        self._nc = nc
        self._idle_pull_s = idle_pull_s
        self._subjects = subjects
        self._admission = admission
        self._bus = bus
        self._tasks = tasks
        self._recorder = recorder
        self._batches = batches
        self._keys = keys
        self._statuses: dict[str, tuple[float, str | None]] = {}
        self._credentials: dict[str, tuple[float, bool]] = {}
        self.fed = 0

    async def run(self, stop: asyncio.Event) -> None:
        js = self._nc.jetstream()
        await js.add_consumer(self._subjects.batch_line_stream, batch_feeder_consumer_config(self._subjects))
        sub = await js.pull_subscribe_bind(
            self._subjects.batch_feeder_consumer, self._subjects.batch_line_stream
        )
        try:
            while not stop.is_set():
                msgs = await fetch_or_wait(sub, _PARALLEL, timeout=self._idle_pull_s)
                if msgs:
                    await asyncio.gather(*(self._feed(msg) for msg in msgs))
                    self._forget_stale()
        finally:
            await sub.unsubscribe()

    async def _feed(self, msg: Msg) -> None:
        try:
            line = QueuedLine.model_validate_json(msg.data)
        except ValidationError:
            log.error("unreadable batch line dropped (%d bytes)", len(msg.data))
            await msg.term()
            return
        try:
            if await self._handle(line, msg):
                await msg.ack()
        except (ModelbusError, NatsError, OSError) as exc:
            # The bus, the task bucket or Postgres is away for a moment: the line comes back.
            log.warning("batch line %s:%d not fed yet (%s)", line.batch_id, line.index, type(exc).__name__)
            await _nak(msg, _RETRY_S)

    async def _handle(self, line: QueuedLine, msg: Msg) -> bool:
        """Feed one line; False if it was put back to try again later (then it must not be acked)."""
        task_id = line_task_id(line.batch_id, line.index)
        status = await self._batch_status(line.batch_id)
        if status is None or status in ("completed", "failed", "cancelled", "expired"):
            return True  # its batch is over (or never came to be): nothing can use the answer
        existing = await self._tasks.get(task_id)
        if existing is not None and existing.status is not TaskStatus.QUEUED:
            return True  # fed before, and a worker has it already (this is a redelivery)
        task = _task(line, task_id)
        if status == "cancelling":
            await self._withdraw(task, "the batch was cancelled before this request ran", "batch_cancelled")
            return True
        if time.time() * 1000 > line.deadline_ms:
            await self._withdraw(
                task, "the batch's completion window ended before this request ran", "batch_expired"
            )
            return True
        notes = AuditNotes()
        try:
            identity = await self._identity(line.identity)
            admitted = await self._admission.admit(
                Submission(
                    identity, BY_PATH[line.url], orjson.dumps(line.body), operation="batch", lane=Lane.BATCH
                ),
                notes,
            )
        except OverLimit as exc:
            if exc.window == "minute" and not exc.impossible:
                await _nak(msg, exc.retry_after_s or _RETRY_S)  # room comes back within the minute
                return False
            await self._refuse(task, exc, notes)
            return True
        except LimitsUnavailable:
            await _nak(msg, _RETRY_S)
            return False
        except Refused as exc:
            await self._refuse(task, exc, notes)
            return True
        admitted = admitted.as_task()
        task.model, task.model_requested = admitted.target.name, admitted.model
        task.request, task.policy_actions = admitted.payload, notes.policy_actions
        try:
            await self._tasks.create_once(task)
            envelope = envelope_for(
                admitted,
                task_id,
                reply_to=self._subjects.task_reply(task_id),
                created_ms=int(time.time() * 1000),
                deadline_ms=line.deadline_ms,
                traceparent=line.traceparent,
            )
            duplicate = await self._bus.enqueue(envelope, admitted.body)
        except BaseException:
            self._admission.refund(admitted)
            raise
        if duplicate:
            # An earlier delivery of this line queued it (and reserved its tokens) already.
            self._admission.refund(admitted)
        self.fed += 1
        return True

    async def _identity(self, snapshot: IdentitySnapshot) -> Identity:
        identity = from_snapshot(snapshot, self._admission.config)
        if identity is None:
            raise Unauthenticated(
                f"the consumer {snapshot.consumer!r} that created this batch no longer exists",
                "invalid_api_key",
            )
        if not await self._credential_valid(snapshot.key_id):
            raise Unauthenticated(
                "the API key that created this batch has been revoked or has expired", "invalid_api_key"
            )
        return identity

    async def _credential_valid(self, key_id: str) -> bool:
        """Whether the key a batch was created with may still act (a JWT cannot be checked again)."""
        if key_id.startswith("jwt:"):
            return True
        now = time.monotonic()
        cached = self._credentials.get(key_id)
        if cached is not None and now - cached[0] < _CACHE_S:
            return cached[1]
        valid = config_key_active(self._admission.config, key_id)
        if valid is None:  # not a key of the configuration file: an issued one
            record = await self._keys.get(key_id)
            valid = record is not None and record.status() == "active"
        self._credentials[key_id] = (now, valid)
        return valid

    async def _batch_status(self, batch_id: str) -> str | None:
        now = time.monotonic()
        cached = self._statuses.get(batch_id)
        if cached is not None and now - cached[0] < _CACHE_S:
            return cached[1]
        status = await self._batches.status(batch_id)
        self._statuses[batch_id] = (now, status)
        return status

    async def _refuse(self, task: Task, refusal: Refused, notes: AuditNotes) -> None:
        task.model_requested = notes.model_requested
        task.policy_actions = notes.policy_actions
        await self._recorder.refuse(task, refusal)

    async def _withdraw(self, task: Task, message: str, code: str) -> None:
        cancelled = code == "batch_cancelled"
        status = AuditStatus.CANCELLED if cancelled else AuditStatus.FAILED
        await self._recorder.refuse(task, Withdrawn(message, code), status)

    def _forget_stale(self) -> None:
        horizon = time.monotonic() - 10 * _CACHE_S
        for cache in (self._statuses, self._credentials):
            if len(cache) > 10_000:
                for key in [k for k, (at, _) in cache.items() if at < horizon]:
                    del cache[key]


def _task(line: QueuedLine, task_id: str) -> Task:
    model = line.body.get("model")
    now_ms = int(time.time() * 1000)
    return Task(
        id=task_id,
        status=TaskStatus.QUEUED,
        endpoint=BY_PATH[line.url].task_name,
        model=model if isinstance(model, str) else "",
        consumer=line.identity.consumer,
        key_id=line.identity.key_id,
        created_at=now_ms // 1000,
        request_id=task_id,
        deadline_ms=line.deadline_ms,
        batch_id=line.batch_id,
        line=line.index,
        custom_id=line.custom_id,
    )


async def _nak(msg: Msg, delay_s: float) -> None:
    try:
        await msg.nak(delay=delay_s)
    except Exception as exc:  # noqa: BLE001 - then the ack wait brings it back
        log.debug("nak failed: %s", exc)
