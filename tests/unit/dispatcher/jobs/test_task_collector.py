"""A late start frame never undoes a finished task (found by the fail-over runs: a start frame of a
redelivered attempt, handled beside the final frame, overwrote "completed" with "running")."""

from __future__ import annotations

import asyncio
import time
import uuid

import nats
import pytest
from nats.aio.msg import Msg

from dispatcher.audit.publisher import AuditPublisher
from dispatcher.bus.bus_settings import BusSettings
from dispatcher.bus.reply_stream import encode_frame
from dispatcher.bus.subjects import Subjects
from dispatcher.bus.topology import ensure_streams, ensure_task_bucket
from dispatcher.errors import TaskChanged
from dispatcher.jobs.task_collector import TaskCollector
from dispatcher.jobs.task_recorder import TaskRecorder
from dispatcher.jobs.task_store import TaskStore
from modelbus.embedded_nats import NatsServer
from schemas.envelope import FinalFrame, StartFrame, Timings
from schemas.tasks import Task, TaskStatus
from tests.support.servers import small_streams


async def test_a_stale_write_is_refused_and_a_late_start_frame_leaves_the_task_completed(
    nats_server: NatsServer,
) -> None:
    nc = await nats.connect(nats_server.url)
    subjects = Subjects("c" + uuid.uuid4().hex[:8])
    settings = BusSettings(nats_url=nats_server.url, namespace=subjects.namespace, **small_streams())
    await ensure_streams(nc.jetstream(), subjects, settings, nc.max_payload, True)
    store = TaskStore(await ensure_task_bucket(nc.jetstream(), subjects, settings))
    collector = TaskCollector(
        nc, subjects, store, TaskRecorder(store, AuditPublisher(nc, subjects, "t"), None, None)
    )
    task_id = "task_" + uuid.uuid4().hex
    now = int(time.time())
    await store.create(
        Task(
            id=task_id,
            status=TaskStatus.QUEUED,
            endpoint="chat.completions",
            model="m",
            consumer="c",
            created_at=now,
            request_id=task_id,
            deadline_ms=now * 1000 + 60_000,
        )
    )
    stale = await store.get_versioned(task_id)
    assert stale is not None

    def frame(kind: type, attempt: int, seq: int, payload: bytes = b"") -> Msg:
        if kind is StartFrame:
            body = StartFrame(attempt=attempt, seq=seq, worker="w", backend="b", queue_ms=1)
        else:
            timings = Timings(received_ms=1, picked_up_ms=2, finished_ms=3)
            body = FinalFrame(attempt=attempt, seq=seq, timings=timings)
        return Msg(_client=nc, subject=subjects.task_reply(task_id), data=encode_frame(body, payload))

    # A stale write is refused outright.
    task, revision = stale
    await store.update(task.model_copy(update={"status": TaskStatus.RUNNING}), revision)
    with pytest.raises(TaskChanged):
        await store.update(task.model_copy(update={"status": TaskStatus.RUNNING}), revision)

    # The interleaving the fail-over run hit: a start frame of a redelivered attempt is read while
    # the final frame is recorded, and written after it.
    reads = 0
    read = store.get_versioned

    async def final_lands_between_read_and_write(task_id: str) -> tuple[Task, int | None] | None:
        nonlocal reads
        found = await read(task_id)
        reads += 1
        if reads == 1:
            await collector._handle(frame(FinalFrame, 1, 1, b'{"choices": []}'))
        return found

    store.get_versioned = final_lands_between_read_and_write  # type: ignore[method-assign]
    await collector._handle(frame(StartFrame, 2, 0))
    store.get_versioned = read  # type: ignore[method-assign]
    found = await store.get_versioned(task_id)
    assert found is not None and found[0].status is TaskStatus.COMPLETED
    assert reads >= 3  # the start frame's write conflicted, and it read the task again
    await asyncio.sleep(0)
    await nc.close()
