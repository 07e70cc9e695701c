"""Queuing a finished task's webhook for the delivery service (dispatcher/webhooks/delivery.py).

The task collector only queues: delivery runs elsewhere, so a slow receiver never holds up the
recording of anyone's task. The message carries just the task id; the service reads the task (and
its current webhook state) when it delivers, so a redelivered message never sends stale data.
"""

from __future__ import annotations

from nats.js import JetStreamContext

from dispatcher.bus.subjects import Subjects


class WebhookQueue:
    def __init__(self, js: JetStreamContext, subjects: Subjects) -> None:
        self._js = js
        self._subjects = subjects

    async def enqueue(self, task_id: str) -> None:
        """Idempotent within the stream's duplicate window (a replayed final frame queues it again);
        after that, the service finds the webhook already delivered and acks without sending."""
        await self._js.publish(
            self._subjects.webhook(task_id),
            task_id.encode(),
            stream=self._subjects.webhook_stream,
            headers={"Nats-Msg-Id": f"webhook-{task_id}"},
        )
