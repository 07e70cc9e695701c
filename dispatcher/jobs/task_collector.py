"""The task collector: turns the reply frames of async tasks into task records and audit rows, and
queues their webhooks (delivered apart, by dispatcher/webhooks/delivery.py).

Workers answer an async task on `<ns>.task.<id>`, which a JetStream stream keeps, so the answer
survives the ingress that accepted the task. The collector (a durable consumer shared by all
dispatcher replicas) records the outcome (dispatcher/jobs/task_recorder.py: KV, Postgres, the task's one
audit event, the webhook's queue entry) and only then acks. A redelivered request's second answer finds the task
already finished and is ignored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from pydantic import ValidationError

from dispatcher.bus.connection import fetch_or_wait
from dispatcher.bus.reply_stream import Frame, decode_frame
from dispatcher.bus.subjects import Subjects
from dispatcher.bus.topology import task_collector_consumer_config
from dispatcher.errors import TaskChanged
from dispatcher.jobs.task_recorder import TaskRecorder
from dispatcher.jobs.task_store import TaskStore
from schemas.envelope import ErrorFrame, FinalFrame, StartFrame
from schemas.tasks import Task, TaskStatus

log = logging.getLogger(__name__)
_PARALLEL = 32
_CAS_ATTEMPTS = 5


@dataclass
class TaskCollector:
    nc: NATS
    subjects: Subjects
    store: TaskStore
    recorder: TaskRecorder
    idle_pull_s: float = 1.0
    finished: int = 0
    _slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(_PARALLEL))
    _running: set[asyncio.Task[None]] = field(default_factory=set)

    async def run(self, stop: asyncio.Event) -> None:
        js = self.nc.jetstream()
        await js.add_consumer(self.subjects.task_reply_stream, task_collector_consumer_config(self.subjects))
        sub = await js.pull_subscribe_bind(
            self.subjects.task_collector_consumer, self.subjects.task_reply_stream
        )
        try:
            while not stop.is_set():
                msgs = await fetch_or_wait(sub, _PARALLEL, timeout=self.idle_pull_s)
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
        task_id = self.subjects.request_id_from(msg.subject)
        try:
            frame, payload = decode_frame(msg.data)
        except (ValueError, ValidationError):
            log.error("undecodable reply frame for task %s dropped", task_id)
            return
        # Frames of one task can be handled at the same time (split over two fetches, redelivered,
        # or taken by two dispatcher replicas): every write is a compare-and-set on what was read,
        # and a conflict means reading again, so a late start frame never undoes a finished task.
        for _ in range(_CAS_ATTEMPTS):
            found = await self.store.get_versioned(task_id)
            if found is None:
                log.error("reply for unknown task %s dropped", task_id)
                return
            task, revision = found
            try:
                await self._apply(task, revision, frame, payload)
                return
            except TaskChanged:
                continue
        raise TaskChanged(task_id)  # still racing: nak'ed and handled again in a second

    async def _apply(self, task: Task, revision: int | None, frame: Frame, payload: bytes) -> None:
        if task.status in (TaskStatus.COMPLETED, TaskStatus.FAILED):
            # The first answer stands. But this may be the same final frame again, redelivered because
            # recording it failed part-way (the status reached KV, then NATS or Postgres timed out):
            # finish the rest. Both steps are idempotent — the row is upserted, and the audit event
            # keeps its id, so the stream and the sink each keep one.
            if isinstance(frame, (FinalFrame, ErrorFrame)):
                await self.recorder.record(task, frame)
            return
        if isinstance(frame, StartFrame):
            task.status, task.started_at, task.worker = TaskStatus.RUNNING, int(time.time()), frame.worker
            await self.store.update(task, revision)
        elif isinstance(frame, (FinalFrame, ErrorFrame)):
            await self.recorder.finish(task, frame, payload, revision)
            self.finished += 1
