"""Publishing to JetStream against a real nats-server: a full stream is said at once, not retried."""

from __future__ import annotations

import time
import uuid

import nats
import pytest
from nats.js import api

from dispatcher.bus.connection import publish_durably
from dispatcher.errors import QueueFull
from modelbus.embedded_nats import NatsServer


async def test_a_full_stream_refuses_at_once_with_queue_full(nats_server: NatsServer) -> None:
    name = "FULL" + uuid.uuid4().hex[:8].upper()
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    try:
        await js.add_stream(
            api.StreamConfig(name=name, subjects=[f"{name}.>"], max_msgs=1, discard=api.DiscardPolicy.NEW)
        )
        first = await publish_durably(js, f"{name}.a", b"1", {"Nats-Msg-Id": "one"}, 10.0)
        assert not first.duplicate
        # A retry of a publish that landed is a duplicate, not a second message: same sequence.
        again = await publish_durably(js, f"{name}.a", b"1", {"Nats-Msg-Id": "one"}, 10.0)
        assert again.duplicate and again.seq == first.seq
        started = time.monotonic()
        with pytest.raises(QueueFull):
            await publish_durably(js, f"{name}.a", b"2", {"Nats-Msg-Id": "two"}, 10.0)
        # Retrying cannot make room: the client hears 503 queue_full now, not after the 10 s budget.
        assert time.monotonic() - started < 1.0
    finally:
        await js.delete_stream(name)
        await nc.close()
