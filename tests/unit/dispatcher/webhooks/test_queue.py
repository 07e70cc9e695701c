"""dispatcher/webhooks/queue.py on a real nats-server: one queued webhook per task, however often a
replayed final frame asks for it, carrying only the task id."""

from __future__ import annotations

from dispatcher.webhooks.queue import WebhookQueue
from tests.unit.conftest import Bus


async def test_a_task_webhook_is_queued_once_with_only_its_id(bus: Bus) -> None:
    queue = WebhookQueue(bus.js, bus.subjects)
    for task_id in ("t1", "t1", "t2", "t1"):
        await queue.enqueue(task_id)
    info = await bus.js.stream_info(bus.subjects.webhook_stream)
    assert info.state.messages == 2
    stored = await bus.js.get_last_msg(bus.subjects.webhook_stream, bus.subjects.webhook("t1"))
    assert stored.data == b"t1"
