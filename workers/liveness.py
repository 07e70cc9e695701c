"""Keeping requests in flight alive: in-progress acks to JetStream, liveness to the waiting ingress.

One ticker for all requests in flight (cheaper than a timer per request). In-progress acks keep
JetStream from redelivering a long generation; liveness keeps the ingress from declaring a silent
worker lost: one *pulse* message per waiting ingress naming all its quiet requests (10,000 idle
streams cost a few messages a second, not 5,000 heartbeat frames), or a heartbeat frame per request
for a sender that reads no pulses (docs/protocol.md, "Liveness, redelivery and deadlines").
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from dispatcher.bus.reply_stream import ReplyWriter
from dispatcher.bus.subjects import Subjects
from schemas.envelope import RequestEnvelope

# Requests named in one pulse message: ~40 bytes each, well under NATS's default 1 MiB payload.
_PULSE_BATCH = 2000


@dataclass
class InFlight:
    """One delivery attempt of a request this worker is running."""

    msg: Msg
    writer: ReplyWriter
    request_id: str
    attempt: int
    pulse_to: str | None  # batched liveness for the waiting ingress; None: heartbeat frames
    progress_at: float = field(default_factory=time.monotonic)
    pulsed_at: float = field(default_factory=time.monotonic)

    @classmethod
    def of(cls, msg: Msg, writer: ReplyWriter, envelope: RequestEnvelope, attempt: int) -> InFlight:
        pulse_to = Subjects.pulse_for(envelope.reply_to) if envelope.pulse else None
        return cls(msg, writer, envelope.id, attempt, pulse_to)

    def quiet_since(self) -> float:
        return max(self.writer.last_sent, self.pulsed_at)


async def keep_alive(
    nc: NATS, in_flight: dict[tuple[str, int], InFlight], heartbeat_s: float, ack_wait_s: float
) -> None:
    """Run forever: every half tick, progress-ack and announce whatever has been quiet too long."""
    tick = min(heartbeat_s, ack_wait_s / 3) / 2
    while True:
        await asyncio.sleep(tick)
        now = time.monotonic()
        pulses: dict[str, list[tuple[str, int]]] = {}
        for live in list(in_flight.values()):
            if now - live.progress_at >= ack_wait_s / 3:
                live.progress_at = now
                await live.msg.in_progress()
            if now - live.quiet_since() < heartbeat_s or live.writer.finished:
                continue
            if live.pulse_to is None:
                await live.writer.heartbeat()
            else:
                live.pulsed_at = now
                pulses.setdefault(live.pulse_to, []).append((live.request_id, live.attempt))
        for subject, alive in pulses.items():
            for start in range(0, len(alive), _PULSE_BATCH):
                await nc.publish(subject, orjson.dumps(alive[start : start + _PULSE_BATCH]))
