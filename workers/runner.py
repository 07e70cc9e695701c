"""Runs one request message: check it, call the backend, stream frames back, then settle the message.

Settling rules (what JetStream does with the message afterwards):
- answered (final frame, or an error that is the request's own fault): ack;
- backend unavailable before anything was sent, deliveries left: nak with a delay, so this or
  another worker tries again; the ingress keeps waiting;
- expired, cancelled, undecodable, or failed after part of a stream went out: term (no redelivery);
- the worker itself is stopping: nak without delay, so another worker takes it at once.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import AsyncIterator

import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from pydantic import ValidationError
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from dispatcher.reply_stream import ReplyWriter
from schemas.envelope import Endpoint, ErrorCode, RequestEnvelope, Timings
from schemas.openai import Usage
from workers.backends.base import Backend, BackendError, Json
from workers.cancellations import Cancellations
from workers.settings import WorkerSettings

log = logging.getLogger(__name__)


class Outcome(enum.Enum):
    ACK = "ack"
    RETRY = "retry"
    TERM = "term"


def _now_ms() -> int:
    return int(time.time() * 1000)


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, BackendError) and exc.retryable


class RequestRunner:
    def __init__(
        self,
        nc: NATS,
        settings: WorkerSettings,
        backend: Backend,
        cancellations: Cancellations,
    ) -> None:
        self._nc = nc
        self._settings = settings
        self._backend = backend
        self._cancellations = cancellations
        self.served = 0

    async def handle(self, msg: Msg) -> None:
        picked_up_ms = _now_ms()
        try:
            envelope = RequestEnvelope.model_validate_json(msg.data)
        except ValidationError:
            log.error("undecodable request message dropped (stream seq %s)", msg.metadata.sequence.stream)
            await msg.term()
            return
        if picked_up_ms >= envelope.deadline_ms or self._cancellations.is_cancelled(envelope.id):
            # Nobody waits for it any more: the ingress has already answered or the client left.
            log.info("request %s dropped: expired or cancelled before pick-up", envelope.id)
            await msg.term()
            return
        writer = ReplyWriter(self._nc, envelope.reply_to, msg.metadata.num_delivered)
        await writer.start(
            self._settings.worker_id,
            self._backend.description,
            envelope.version,
            queue_ms=max(0, picked_up_ms - envelope.created_ms),
        )
        job = asyncio.create_task(self._execute(envelope, writer, picked_up_ms, msg.metadata.num_delivered))
        self._cancellations.track(envelope.id, job)  # type: ignore[arg-type]
        keep_alive = asyncio.create_task(self._keep_alive(msg, writer))
        try:
            outcome = await job
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                # The worker is stopping: hand the request to another worker straight away.
                job.cancel()
                await msg.nak()
                raise
            log.info("request %s cancelled by the ingress", envelope.id)
            outcome = Outcome.TERM
        finally:
            keep_alive.cancel()
            self._cancellations.untrack(envelope.id)
        await self._settle(msg, outcome)

    async def _settle(self, msg: Msg, outcome: Outcome) -> None:
        if outcome is Outcome.ACK:
            self.served += 1
            await msg.ack()
        elif outcome is Outcome.RETRY:
            await msg.nak(delay=min(2.0**msg.metadata.num_delivered, 30.0))
        else:
            await msg.term()

    async def _keep_alive(self, msg: Msg, writer: ReplyWriter) -> None:
        """In-progress acks keep JetStream from redelivering; heartbeats keep the ingress waiting."""
        tick = min(self._settings.heartbeat_s, self._settings.ack_wait_s / 3)
        last_progress = time.monotonic()
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            if now - last_progress >= self._settings.ack_wait_s / 3:
                await msg.in_progress()
                last_progress = now
            if now - writer.last_sent >= self._settings.heartbeat_s:
                await writer.heartbeat()

    async def _execute(
        self, envelope: RequestEnvelope, writer: ReplyWriter, picked_up_ms: int, attempt: int
    ) -> Outcome:
        timings = Timings(received_ms=envelope.created_ms, picked_up_ms=picked_up_ms, finished_ms=0)
        try:
            async with asyncio.timeout(max(0.0, (envelope.deadline_ms - _now_ms()) / 1000)):
                if envelope.stream:
                    await self._stream(envelope, writer, timings)
                else:
                    await self._complete(envelope, writer, timings)
            return Outcome.ACK
        except TimeoutError:
            await writer.error(ErrorCode.DEADLINE_EXCEEDED, "the request deadline passed", 504, True)
            return Outcome.TERM
        except BackendError as exc:
            if not exc.retryable:
                code = ErrorCode.INVALID_REQUEST if exc.status == 400 else ErrorCode.BACKEND_ERROR
                await writer.error(code, exc.message, exc.status, False)
                return Outcome.ACK
            if attempt < self._settings.max_deliver and writer.sent_data is False:
                log.warning("request %s: backend unavailable, leaving it for redelivery", envelope.id)
                return Outcome.RETRY
            await writer.error(ErrorCode.BACKEND_UNAVAILABLE, exc.message, 503, True)
            return Outcome.TERM

    def _retrying(self) -> AsyncRetrying:
        return AsyncRetrying(
            retry=retry_if_exception(_retryable),
            stop=stop_after_attempt(self._settings.local_retries + 1),
            wait=wait_exponential(multiplier=0.1, max=1.0),
            reraise=True,
        )

    async def _complete(self, envelope: RequestEnvelope, writer: ReplyWriter, timings: Timings) -> None:
        body: Json = {}
        async for attempt in self._retrying():
            with attempt:
                body = await self._backend.complete(envelope.endpoint, envelope.payload)
        _rewrite(body, envelope)
        usage = _usage(body)
        timings.finished_ms = _now_ms()
        choices = body.get("choices") or [{}]
        finish = choices[0].get("finish_reason") if isinstance(choices[0], dict) else None
        await writer.final(timings, usage, finish, orjson.dumps(body))

    async def _stream(self, envelope: RequestEnvelope, writer: ReplyWriter, timings: Timings) -> None:
        wants_usage = bool((envelope.payload.get("stream_options") or {}).get("include_usage"))
        usage: Usage | None = None
        finish: str | None = None
        buffer: list[bytes] = []
        ready = asyncio.Event()
        exhausted = False

        async def pump(chunks: AsyncIterator[Json]) -> None:
            # Runs ahead of the publisher: chunks that arrive together leave in one frame.
            nonlocal usage, finish, exhausted
            async for chunk in chunks:
                if chunk.get("usage"):
                    usage = Usage.model_validate(chunk["usage"])
                for choice in chunk.get("choices") or ():
                    finish = choice.get("finish_reason") or finish
                if not chunk.get("choices"):
                    if not wants_usage:
                        continue  # a usage-only chunk the client did not ask for
                elif not wants_usage:
                    chunk.pop("usage", None)
                if timings.first_token_ms is None:
                    timings.first_token_ms = _now_ms()
                _rewrite(chunk, envelope)
                buffer.append(orjson.dumps(chunk))
                ready.set()
            exhausted = True
            ready.set()

        chunks = await self._open_stream(envelope)
        async with asyncio.TaskGroup() as group:
            group.create_task(pump(chunks))
            while True:
                await ready.wait()
                ready.clear()
                batch = buffer.copy()
                buffer.clear()
                await writer.chunks(batch)
                if exhausted and not buffer:
                    break
        timings.finished_ms = _now_ms()
        await writer.final(timings, usage, finish)

    async def _open_stream(self, envelope: RequestEnvelope) -> AsyncIterator[Json]:
        """Open the backend stream and wait for its first chunk, retrying while that is safe."""
        async for attempt in self._retrying():
            with attempt:
                stream = self._backend.stream(envelope.endpoint, envelope.payload)
                try:
                    first = await anext(stream)
                except StopAsyncIteration:
                    return _empty()
                except BaseException:
                    await stream.aclose()  # type: ignore[attr-defined]
                    raise
                return _prepend(first, stream)
        raise AssertionError("unreachable: tenacity re-raises the last error")


async def _empty() -> AsyncIterator[Json]:
    return
    yield  # pragma: no cover - makes this an async generator


async def _prepend(first: Json, rest: AsyncIterator[Json]) -> AsyncIterator[Json]:
    try:
        yield first
        async for item in rest:
            yield item
    finally:
        await rest.aclose()  # type: ignore[attr-defined]


def _rewrite(body: Json, envelope: RequestEnvelope) -> None:
    """Our id and the public model name replace the backend's own."""
    prefix = {Endpoint.CHAT: "chatcmpl", Endpoint.COMPLETIONS: "cmpl"}.get(envelope.endpoint)
    if prefix:
        body["id"] = f"{prefix}-{envelope.id}"
    body["model"] = envelope.target


def _usage(body: Json) -> Usage | None:
    raw = body.get("usage")
    return Usage.model_validate(raw) if isinstance(raw, dict) else None
