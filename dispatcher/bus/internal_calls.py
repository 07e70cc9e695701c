"""Requests the gateway makes for itself (the injection classifier's chat call, the semantic cache's
embeddings): queued and capacity-pulled like any other, under a system consumer, with a short
deadline. A caller that gets None goes on without the answer: these are aids, and waiting on them
must never turn a slow or missing model into a gateway outage."""

from __future__ import annotations

import time
import uuid
from typing import Any

from dispatcher.admission.admitted import SYSTEM_CONSUMER, Admitted, envelope_for
from dispatcher.bus.client import BusClient
from dispatcher.errors import ModelbusError
from schemas.config import ModelConfig
from schemas.envelope import Endpoint, FinalFrame


async def ask(
    bus: BusClient,
    model: ModelConfig,
    endpoint: Endpoint,
    payload: dict[str, Any],
    timeout_s: float,
    consumer: str = SYSTEM_CONSUMER,
) -> bytes | None:
    """The final answer's body, or None if the model could not answer within `timeout_s`."""
    request_id = f"{consumer}-{uuid.uuid4().hex}"
    now_ms = int(time.time() * 1000)
    envelope = envelope_for(
        Admitted.internal(model, endpoint, payload, consumer),
        request_id,
        reply_to=bus.reply_subject(request_id),
        pulse=True,
        created_ms=now_ms,
        deadline_ms=now_ms + int(timeout_s * 1000),
        traceparent=None,
    )
    try:
        reply = await bus.submit(envelope)
    except ModelbusError:
        return None
    try:
        give_up = time.monotonic() + timeout_s
        while (left := give_up - time.monotonic()) > 0:
            for frame, answer in await reply.frames(left):
                if isinstance(frame, FinalFrame):
                    return answer
        await reply.cancel()
        return None
    except ModelbusError:
        return None
    finally:
        await reply.close()
