"""The reply protocol: how a worker sends frames back and how the ingress puts them in order.

Frames travel over core NATS (not JetStream): the request is what must survive failures, the
token stream only needs to reach one waiting ingress fast. Core NATS can drop messages for a slow
subscriber, and a redelivered request produces a second set of frames, so every frame carries the
delivery attempt and a per-attempt sequence number and the reader checks both.

Wire format of one frame: `<meta JSON>\\n<payload bytes>`; the payload is opaque to this layer.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from pydantic import TypeAdapter
from tenacity import AsyncRetrying, retry_if_exception, stop_after_delay, wait_exponential

from dispatcher.bus.connection import is_transient
from dispatcher.errors import StreamBroken
from schemas.envelope import (
    ChunkFrame,
    ErrorCode,
    ErrorFrame,
    FinalFrame,
    HeartbeatFrame,
    Pickup,
    ReplyFrame,
    StartFrame,
    Timings,
)
from schemas.openai import Usage

_FRAME: TypeAdapter[ReplyFrame] = TypeAdapter(ReplyFrame)
# Longer than an R3 leader election; if JetStream stays away longer the worker does not ack, and
# the request is redelivered.
_DURABLE_RETRY_S = 30.0
Frame = StartFrame | ChunkFrame | FinalFrame | ErrorFrame | HeartbeatFrame


def encode_frame(frame: Frame, payload: bytes = b"") -> bytes:
    return frame.model_dump_json(exclude_none=True).encode() + b"\n" + payload


def decode_frame(data: bytes) -> tuple[Frame, bytes]:
    meta, _, payload = data.partition(b"\n")
    return _FRAME.validate_json(meta), payload


class ReplyWriter:
    """Worker side: publishes the frames of one delivery attempt of one request, numbered.

    With `js` (an async task's reply, which a stream keeps for the collector), the last frame is
    published through JetStream and awaited: a core publish during a leader election is dropped
    silently, and the worker would then ack a request whose outcome nobody recorded.
    """

    def __init__(self, nc: NATS, subject: str, attempt: int, js: JetStreamContext | None = None) -> None:
        self._nc = nc
        self._js = js
        self._subject = subject
        self._attempt = attempt
        self._seq = 0
        self.last_sent = time.monotonic()
        self.finished = False
        self.sent_data = False  # once true, a retry would duplicate output the client has seen
        self.usage: Usage | None = None  # as the final frame reported it
        self._pickup: Pickup | None = None  # not announced yet: goes with the final frame

    async def _send(self, frame: Frame, payload: bytes = b"") -> None:
        await self._nc.publish(self._subject, encode_frame(frame, payload))
        self.last_sent = time.monotonic()

    async def _send_last(self, frame: Frame, payload: bytes = b"") -> None:
        if self._js is None:
            await self._send(frame, payload)
            return
        data = encode_frame(frame, payload)
        # Same id on every retry: a publish whose ack was lost is deduplicated by the stream.
        headers = {"Nats-Msg-Id": f"{self._subject}.{self._attempt}.{frame.seq}"}
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(is_transient),
            stop=stop_after_delay(_DURABLE_RETRY_S),
            wait=wait_exponential(multiplier=0.05, max=1.0),
            reraise=True,
        ):
            with attempt:
                await self._js.publish(self._subject, data, timeout=2.0, headers=headers)
        self.last_sent = time.monotonic()

    def _next_seq(self) -> int:
        seq = self._seq
        self._seq += 1
        return seq

    async def start(self, pickup: Pickup, announce: bool) -> None:
        """Say who picked the request up: now in a start frame if `announce`, else with the first
        frame that goes out (`announce()`, the first chunk frame or the final frame): one message and
        one wake-up fewer when nobody can use the news before the answer."""
        self._pickup = pickup
        if announce:
            await self.announce()

    @property
    def announced(self) -> bool:
        return self._pickup is None

    async def announce(self) -> None:
        """Send the start frame now, unless the pickup has already gone out."""
        pickup, self._pickup = self._pickup, None
        if pickup is not None:
            await self._send(StartFrame(attempt=self._attempt, seq=self._next_seq(), **pickup.model_dump()))

    async def chunks(self, chunks: Sequence[bytes]) -> None:
        """Send several stream chunks (serialized OpenAI chunk objects) as one frame."""
        if chunks:
            pickup, self._pickup = self._pickup, None
            frame = ChunkFrame(attempt=self._attempt, seq=self._next_seq(), count=len(chunks), pickup=pickup)
            self.sent_data = True
            await self._send(frame, b"\n".join(chunks))

    async def final(
        self,
        timings: Timings,
        usage: Usage | None,
        finish_reason: str | None,
        body: bytes = b"",
        guard_events: list[str] | None = None,
        chunks: Sequence[bytes] = (),
    ) -> None:
        """End the reply; `body` is a whole response, `chunks` a stream's last chunks (only for an
        envelope with `chunks_in_final`)."""
        if chunks:
            body = b"\n".join(chunks)
            self.sent_data = True
        frame = FinalFrame(
            attempt=self._attempt,
            seq=self._next_seq(),
            count=len(chunks) or None,
            usage=usage,
            finish_reason=finish_reason,
            timings=timings,
            guard_events=guard_events or [],
            pickup=self._pickup,
        )
        await self._send_last(frame, body)
        self.usage = usage
        self.finished = True

    async def error(
        self,
        code: ErrorCode,
        message: str,
        status: int,
        retryable: bool,
        *,
        api_code: str | None = None,
        param: str | None = None,
    ) -> None:
        frame = ErrorFrame(
            attempt=self._attempt,
            seq=self._next_seq(),
            code=code,
            message=message,
            status=status,
            retryable=retryable,
            api_code=api_code,
            param=param,
        )
        await self._send_last(frame)
        self.finished = True

    async def heartbeat(self) -> None:
        await self._send(HeartbeatFrame(attempt=self._attempt))


class ReplySequencer:
    """Ingress side: turns frames as they arrive into frames in order for the current attempt.

    - frames of an older attempt than the newest seen are stale and dropped;
    - a newer attempt (the request was redelivered) restarts the sequence; the caller decides
      whether that is acceptable (it is not once part of an answer has reached the client);
    - duplicates are dropped; frames after a gap wait until the gap fills (reordering), and a gap
      that lasts longer than `gap_timeout_s` or holds more than `window` frames breaks the stream.
    """

    def __init__(self, window: int = 256, gap_timeout_s: float = 2.0) -> None:
        self.attempt = 0
        self._expected = 0
        self._held: dict[int, tuple[Frame, bytes]] = {}
        self._gap_since: float | None = None
        self._window = window
        self._gap_timeout_s = gap_timeout_s

    @property
    def gap_deadline(self) -> float | None:
        """Monotonic time by which the current gap must fill, if one is open."""
        return None if self._gap_since is None else self._gap_since + self._gap_timeout_s

    def check_gap(self, now: float) -> None:
        deadline = self.gap_deadline
        if deadline is not None and now >= deadline:
            raise StreamBroken(f"reply frames {self._expected}.. missing for {self._gap_timeout_s}s")

    def push(self, frame: Frame, payload: bytes) -> list[tuple[Frame, bytes]]:
        if isinstance(frame, HeartbeatFrame) or frame.attempt < self.attempt:
            return []
        if frame.attempt > self.attempt:
            self.attempt = frame.attempt
            self._expected = 0
            self._held.clear()
            self._gap_since = None
        if frame.seq < self._expected or frame.seq in self._held:
            return []  # duplicate
        if frame.seq > self._expected:
            self._held[frame.seq] = (frame, payload)
            if self._gap_since is None:
                self._gap_since = time.monotonic()
            if len(self._held) > self._window:
                raise StreamBroken(f"reply frame {self._expected} lost; {len(self._held)} held")
            return []
        ready: list[tuple[Frame, bytes]] = [(frame, payload)]
        self._expected += 1
        while self._expected in self._held:
            ready.append(self._held.pop(self._expected))
            self._expected += 1
        self._gap_since = time.monotonic() if self._held else None
        return ready


__all__ = [
    "ErrorCode",
    "Frame",
    "ReplySequencer",
    "ReplyWriter",
    "decode_frame",
    "encode_frame",
]
