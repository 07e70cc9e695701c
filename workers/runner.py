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
from collections.abc import Callable

import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from pydantic import ValidationError

from dispatcher.bus.connection import jetstream
from dispatcher.bus.reply_stream import ReplyWriter
from dispatcher.bus.subjects import Subjects
from dispatcher.caching.stored_responses import ResponseStore
from dispatcher.guardrails.response import ResponseGuard
from dispatcher.policy.quotas import COST_UNIT, QuotaLedger, cost_counters
from dispatcher.telemetry import metrics
from dispatcher.telemetry.labels import MetricLabels
from schemas.envelope import Affinity, Endpoint, ErrorCode, Pickup, RequestEnvelope, Timings
from schemas.openai import Usage
from schemas.traffic import Cost
from workers import dialects
from workers.backends.backend_errors import BackendError, overflow_message
from workers.backends.base import Backend, Json
from workers.cancellations import Cancellations
from workers.coalescer import EmbeddingCoalescer
from workers.dialects import Passthrough
from workers.liveness import InFlight, keep_alive
from workers.openai_shape import chunk_shaper, normalize
from workers.slot_pins import pinned
from workers.stream_opening import open_stream
from workers.telemetry import post_processing, processing, record_inference, record_post_processing
from workers.worker_settings import WorkerSettings

log = logging.getLogger(__name__)


class Outcome(enum.Enum):
    ACK = "ack"
    RETRY = "retry"
    TERM = "term"


# A stream whose first chunk takes longer than this gets a start frame; a quicker one's pickup rides
# on its first chunk frame (one message fewer). Well under the ingress's keep-alive interval
# (`sse_keepalive_s`, 10 s by default), until which it holds a stream's headers for the first token.
_ANNOUNCE_AFTER_S = 0.5


def _now_ms() -> int:
    return int(time.time() * 1000)


class RequestRunner:
    def __init__(
        self,
        nc: NATS,
        settings: WorkerSettings,
        backend: Backend,
        cancellations: Cancellations,
        coalesce_ms: float = 0.0,
        coalesce_max_inputs: int = 64,
        quotas: QuotaLedger | None = None,
        responses: ResponseStore | None = None,
        price: Callable[[], Cost | None] | None = None,
        labels: Callable[[], MetricLabels] | None = None,
        affinity: Callable[[Msg], Affinity | None] | None = None,
        slot: Callable[[Msg], int | None] | None = None,
    ) -> None:
        self._nc = nc
        self._affinity = affinity  # home or stolen, for a model with prefix affinity
        self._slot = slot  # the backend slot a message is pinned to (workers/slot_pins.py)
        self._quotas = quotas
        self._responses = responses
        self._price = price  # the model's token prices now (the configuration may change them)
        # Metric label values allowed by the configuration now; none: every consumer is `unknown`.
        self._labels = labels or (lambda: MetricLabels(frozenset(), frozenset(), frozenset()))
        self._js = jetstream(nc, settings)
        self._subjects = Subjects(settings.namespace)
        self._settings = settings
        self._backend = backend
        self._cancellations = cancellations
        # Keyed by (request, delivery): a request JetStream redelivered while its first delivery still
        # runs here (its in-progress acks lost in a NATS outage) is two entries, not one overwritten.
        self._live: dict[tuple[str, int], InFlight] = {}
        self.coalescer = (
            EmbeddingCoalescer(lambda: self._backend, coalesce_ms / 1000, coalesce_max_inputs)
            if coalesce_ms
            else None
        )
        self.served = 0
        self.avg_service_ms: float | None = None  # moving average, for the capacity view
        self._announcing: set[asyncio.Future[None]] = set()  # start frames of slow streams, in flight

    async def handle(self, msg: Msg) -> None:
        picked_up_ms = _now_ms()
        try:
            envelope = RequestEnvelope.model_validate_json(msg.data)
        except ValidationError:
            log.error("undecodable request message dropped (stream seq %s)", msg.metadata.sequence.stream)
            await msg.term()
            return
        expired = picked_up_ms >= envelope.deadline_ms
        if expired or self._cancellations.is_cancelled(envelope.id):
            # Not run: the deadline passed or the request was cancelled. Its reply subject still hears
            # the outcome (a task's record must end); an ingress that stopped waiting ignores it.
            log.info(
                "request %s dropped: %s before pick-up", envelope.id, "expired" if expired else "cancelled"
            )
            writer = self._writer(envelope, msg.metadata.num_delivered)
            if expired:
                await writer.error(
                    ErrorCode.DEADLINE_EXCEEDED, "the request deadline passed in the queue", 504, True
                )
            else:
                await writer.error(ErrorCode.CANCELLED, "the request was cancelled", 499, False)
            await msg.term()
            self._settle_quota(envelope, 0)
            return
        attempt = msg.metadata.num_delivered
        writer = self._writer(envelope, attempt)
        affinity = self._affinity(msg) if self._affinity is not None else None
        if affinity is not None:
            metrics.AFFINITY.labels(self._labels().model(envelope.target), affinity).inc()
        pickup = Pickup(
            worker=self._settings.worker_id,
            backend=self._backend.description,
            version=envelope.version,
            queue_ms=max(0, picked_up_ms - envelope.created_ms),
            affinity=affinity,
        )
        # Only a task (`running`) and a stream (headers, first SSE comment) can use a start frame. A
        # plain request's pickup rides on its final frame, a stream's on its first chunk frame unless
        # the first token is slow (then the start frame goes out after _ANNOUNCE_AFTER_S). Liveness:
        # pulses, or heartbeats after heartbeat_s.
        task_reply = self._subjects.is_task_reply(envelope.reply_to)
        await writer.start(pickup, announce=task_reply)
        announcing = (
            asyncio.get_running_loop().call_later(_ANNOUNCE_AFTER_S, self._announce_soon, writer)
            if envelope.stream and not task_reply
            else None
        )
        current = asyncio.current_task()
        assert current is not None
        self._cancellations.track(envelope.id, current)
        self._live[(envelope.id, attempt)] = InFlight.of(msg, writer, envelope, attempt)
        try:
            with processing(envelope, picked_up_ms, self._settings.worker_id):
                slot = self._slot(msg) if self._slot is not None else None
                outcome = await self._execute(envelope, writer, picked_up_ms, attempt, slot)
            took = _now_ms() - picked_up_ms
            self.avg_service_ms = (
                took if self.avg_service_ms is None else 0.9 * self.avg_service_ms + 0.1 * took
            )
        except asyncio.CancelledError:
            if not self._cancellations.is_cancelled(envelope.id) or current.cancelling() > 1:
                # The worker is stopping: hand the request to another worker straight away.
                await msg.nak()
                raise
            current.uncancel()  # cancelled by the ingress: settle the message and carry on
            log.info("request %s cancelled by the ingress", envelope.id)
            if not writer.finished:
                await writer.error(ErrorCode.CANCELLED, "the request was cancelled", 499, False)
            outcome = Outcome.TERM
        finally:
            if announcing is not None:
                announcing.cancel()
            self._cancellations.untrack(envelope.id, current)
            del self._live[(envelope.id, attempt)]
        await self._settle(msg, outcome)
        metrics.WORKER_REQUESTS.labels(self._labels().model(envelope.target), outcome.value).inc()
        if outcome is not Outcome.RETRY:
            self._settle_quota(envelope, _tokens_used(writer))
            self._count_cost(envelope, writer.usage)

    def _announce_soon(self, writer: ReplyWriter) -> None:
        """A stream's first token is slow: send its start frame now, so that the ingress's headers
        and first SSE comment can name the worker before its keep-alive interval runs out."""
        if not writer.announced and not writer.finished:
            task = asyncio.ensure_future(writer.announce())
            self._announcing.add(task)
            task.add_done_callback(self._announcing.discard)

    def _count_cost(self, envelope: RequestEnvelope, usage: Usage | None) -> None:
        """What the request cost at its model's prices: a metric, and the consumer's money counters."""
        price = self._price() if self._price is not None else None
        if price is None or usage is None:
            return
        cost = price.of(usage.prompt_tokens, usage.completion_tokens)
        labels = self._labels()
        metrics.COST.labels(labels.model(envelope.target), labels.consumer(envelope.consumer)).inc(cost)
        if self._quotas is not None and cost > 0:
            for counter in cost_counters(self._subjects, envelope.consumer, envelope.model, time.time()):
                self._quotas.add_soon(counter, round(cost * COST_UNIT))

    def _settle_quota(self, envelope: RequestEnvelope, used: int | None) -> None:
        if envelope.quota is not None and self._quotas is not None:
            self._quotas.settle(envelope.quota, used)

    @property
    def in_flight(self) -> int:
        return len(self._live)

    def _writer(self, envelope: RequestEnvelope, attempt: int) -> ReplyWriter:
        durable = self._subjects.is_task_reply(envelope.reply_to)
        return ReplyWriter(self._nc, envelope.reply_to, attempt, self._js if durable else None)

    @property
    def backend(self) -> Backend:
        return self._backend

    def swap_backend(self, backend: Backend) -> Backend:
        """Use `backend` for requests picked up from now on; returns the old one (still in use by
        requests already running) for the caller to close when they are done."""
        old, self._backend = self._backend, backend
        return old

    async def keep_alive(self) -> None:
        """Progress acks and liveness for every request in flight (workers/liveness.py)."""
        await keep_alive(self._nc, self._live, self._settings.heartbeat_s, self._settings.ack_wait_s)

    async def _settle(self, msg: Msg, outcome: Outcome) -> None:
        if outcome is Outcome.ACK:
            self.served += 1
            await msg.ack()
        elif outcome is Outcome.RETRY:
            await msg.nak(delay=min(2.0**msg.metadata.num_delivered, 30.0))
        else:
            await msg.term()

    async def _execute(
        self,
        envelope: RequestEnvelope,
        writer: ReplyWriter,
        picked_up_ms: int,
        attempt: int,
        slot: int | None,
    ) -> Outcome:
        timings = Timings(received_ms=envelope.created_ms, picked_up_ms=picked_up_ms, finished_ms=0)
        try:
            async with asyncio.timeout(max(0.0, (envelope.deadline_ms - _now_ms()) / 1000)):
                if envelope.stream:
                    await self._stream(envelope, writer, timings, slot)
                else:
                    await self._complete(envelope, writer, timings, slot)
            record_inference(timings)
            return Outcome.ACK
        except TimeoutError:
            await writer.error(ErrorCode.DEADLINE_EXCEEDED, "the request deadline passed", 504, True)
            return Outcome.TERM
        except BackendError as exc:
            if not exc.retryable:
                code = ErrorCode.INVALID_REQUEST if exc.status == 400 else ErrorCode.BACKEND_ERROR
                message = exc.message
                if exc.overflow is not None:  # said the way the client's API says it
                    message = overflow_message(*exc.overflow, envelope.endpoint is Endpoint.MESSAGES)
                await writer.error(code, message, exc.status, False, api_code=exc.code)
                return Outcome.ACK
            if attempt < self._settings.max_deliver and writer.sent_data is False:
                log.warning("request %s: backend unavailable, leaving it for redelivery", envelope.id)
                return Outcome.RETRY
            await writer.error(ErrorCode.BACKEND_UNAVAILABLE, exc.message, 503, True)
            return Outcome.TERM

    async def _backoff(self, attempt: int, exc: BackendError) -> None:
        """Retry only what is retryable, a bounded number of times, with exponential backoff."""
        if not exc.retryable or attempt >= self._settings.local_retries:
            raise exc
        await asyncio.sleep(min(0.1 * 2**attempt, 1.0))

    async def _complete(
        self, envelope: RequestEnvelope, writer: ReplyWriter, timings: Timings, slot: int | None
    ) -> None:
        plan = dialects.plan(envelope, self._backend.native)
        payload = pinned(plan.endpoint, plan.payload, slot)
        attempt = 0
        while True:
            try:
                if self.coalescer is not None and envelope.endpoint is Endpoint.EMBEDDINGS:
                    body = await self.coalescer.embed(envelope.payload)
                else:
                    body = await self._backend.complete(plan.endpoint, payload)
                break
            except BackendError as exc:
                await self._backoff(attempt, exc)
                attempt += 1
        timings.finished_ms = _now_ms()
        with post_processing():
            normalize(body, envelope, endpoint=plan.endpoint)
            guard = ResponseGuard(envelope.output_guard, plan.endpoint) if envelope.output_guard else None
            if guard is not None:
                guard.body(body)
        choices = body.get("choices") or [{}]
        finish = choices[0].get("finish_reason") if isinstance(choices[0], dict) else None
        body, usage = plan.body(body, _usage(body))
        finish = finish or body.get("stop_reason") or body.get("status")
        if plan.stores:
            await self._store(envelope, body)
        await writer.final(timings, usage, finish, orjson.dumps(body), guard.events if guard else None)

    async def _store(self, envelope: RequestEnvelope, response: Json) -> None:
        """Keep a Responses answer before anyone can see it; if it cannot be kept, the answer says so."""
        if self._responses is None or not await self._responses.save(dialects.stored(envelope, response)):
            response["store"] = False

    async def _stream(
        self, envelope: RequestEnvelope, writer: ReplyWriter, timings: Timings, slot: int | None
    ) -> None:
        plan = dialects.plan(envelope, self._backend.native)
        payload = pinned(plan.endpoint, plan.payload, slot)
        presenter = plan.presenter()
        passthrough = isinstance(presenter, Passthrough)  # each chunk is one event, as it is
        chat_side = plan.endpoint in (Endpoint.CHAT, Endpoint.COMPLETIONS)  # chunks with choices
        wants_usage = not plan.translated and bool(
            (envelope.payload.get("stream_options") or {}).get("include_usage")
        )
        usage: Usage | None = None
        finish: str | None = None
        buffer: list[bytes] = []  # serialized events not sent yet
        guard = ResponseGuard(envelope.output_guard, plan.endpoint) if envelope.output_guard else None
        shape = chunk_shaper(envelope, plan.endpoint) if chat_side else None
        post_ns = 0  # time spent on normalization, output guardrails and serialization

        batches = await open_stream(self._backend, plan.endpoint, payload, self._backoff)
        try:
            # One step per batch (the chunks of one read), in this task: no pump task or event per
            # stream. A batch the stream did not end with goes out at once, as one frame.
            async for chunks, last in batches:
                began = time.perf_counter_ns()
                for chunk in chunks:
                    if shape is not None:
                        if chunk.get("usage"):
                            usage = Usage.model_validate(chunk["usage"])
                        choices = chunk.get("choices")
                        if choices:
                            for choice in choices:
                                finish = choice.get("finish_reason") or finish
                            if not wants_usage:
                                chunk.pop("usage", None)
                        elif not wants_usage:
                            continue  # a usage-only chunk the client did not ask for
                    if timings.first_token_ms is None:
                        timings.first_token_ms = _now_ms()
                    if shape is not None:
                        shape(chunk)
                    if guard is not None:
                        guard.chunk(chunk)
                    if passthrough:
                        buffer.append(orjson.dumps(chunk))
                    else:
                        buffer.extend(orjson.dumps(event) for event in presenter.chunk(chunk))
                post_ns += time.perf_counter_ns() - began
                # A usage-only chunk ends a chat stream's content (only `[DONE]` follows): what came
                # with it waits for the end, to leave in the final frame (a moment at most).
                ended = last or (shape is not None and bool(chunks) and _usage_only(chunks[-1]))
                if buffer and not (ended and envelope.chunks_in_final):
                    await writer.chunks(buffer)
                    buffer = []
        finally:
            await batches.aclose()  # type: ignore[attr-defined]
        closing: list[Json] = []
        if guard is not None and (rest := guard.finish()) is not None:
            closing += presenter.chunk(rest)
        closing += presenter.finish(usage, finish)
        usage = presenter.usage or usage
        if plan.stores and presenter.response is not None:
            # Stored before `response.completed` leaves: the client may continue it at once.
            await self._store(envelope, presenter.response)
            finish = finish or presenter.response.get("status")
        buffer.extend(orjson.dumps(event) for event in closing)
        if buffer and not envelope.chunks_in_final:
            await writer.chunks(buffer)  # an older ingress reads no chunks from a final frame
            buffer = []
        timings.finished_ms = _now_ms()
        record_post_processing(post_ns, timings.finished_ms)
        await writer.final(
            timings, usage, finish, guard_events=guard.events if guard else None, chunks=buffer
        )


def _tokens_used(writer: ReplyWriter) -> int | None:
    """What the request cost: the backend's count; nothing if it failed before any output; unknown
    (None: the reservation stands) if it failed part-way."""
    if writer.usage is not None:
        return writer.usage.total_tokens or writer.usage.prompt_tokens + writer.usage.completion_tokens
    return None if writer.sent_data else 0


def _usage_only(chunk: Json) -> bool:
    """The chunk that closes a chat stream when usage is asked for: usage and no choices."""
    return bool(chunk.get("usage")) and not chunk.get("choices")


def _usage(body: Json) -> Usage | None:
    raw = body.get("usage")
    return Usage.model_validate(raw) if isinstance(raw, dict) else None
