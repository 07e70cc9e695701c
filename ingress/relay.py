"""From a validated HTTP request to the bus and back: JSON for plain calls, SSE for streams.

The relay never parses token payloads: chunk frames hold serialized OpenAI chunks, one per line,
and each becomes one `data:` event as it is.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from fastapi import Request
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from starlette.responses import Response
from starlette.types import Receive

from dispatcher.admission.admitted import Admitted, envelope_for
from dispatcher.admission.identity import Identity
from dispatcher.admission.pipeline import Admission, Submission
from dispatcher.bus.client import BusClient, ReplyStream
from dispatcher.bus.reply_stream import Frame
from dispatcher.errors import Interrupted, ModelbusError, RemoteError
from dispatcher.telemetry.tracing import traceparent_of
from ingress.audit_events import AuditDraft, draft_of
from ingress.body import read_body
from ingress.degradation import HEADER as DEGRADED
from ingress.degradation import Degradation
from ingress.error_responses import APIError, from_bus_error
from ingress.ingress_settings import IngressSettings
from ingress.sse import (
    DONE,
    SSE_HEADERS,
    EventStreamResponse,
    LastEvents,
    comment,
    data_event,
    error_event,
    named_event,
)
from ingress.task_intake import TaskIntake, wants_async
from schemas.endpoints import EndpointSpec
from schemas.envelope import ChunkFrame, FinalFrame, Pickup, StartFrame
from schemas.openai import error_body
from schemas.traffic import RouteNeeds

_TRACER = trace.get_tracer("modelbus.ingress")
# The openai SDK sends its read timeout; for a non-streaming call that is how long it will wait.
_SDK_TIMEOUT = "x-stainless-read-timeout"


@dataclass(frozen=True)
class _Call:
    """One client request on its way through the relay (possibly sent twice: again to a fallback)."""

    request: Request
    draft: AuditDraft
    deadline_ms: int


class Relay:
    def __init__(
        self,
        bus: BusClient,
        settings: IngressSettings,
        admission: Admission,
        tasks: TaskIntake,
        degradation: Degradation,
    ) -> None:
        self._bus = bus
        self._settings = settings
        self._admission = admission
        self._tasks = tasks
        self._degradation = degradation
        # Leave room for the envelope around the body inside one NATS message.
        self.max_body = min(settings.max_body_bytes, bus.max_payload - 16 * 1024)

    async def serve(self, request: Request, identity: Identity, spec: EndpointSpec) -> Response:
        """A direct inference call: answered now (JSON or SSE), or accepted as a task (202) when the
        caller prefers `respond-async`."""
        body = await read_body(request, self.max_body)
        return await self.admit_and_run(request, identity, spec, body, wants_async(request), None)

    async def admit_and_run(
        self,
        request: Request,
        identity: Identity,
        spec: EndpointSpec,
        body: bytes,
        is_async: bool,
        webhook_url: str | None,
    ) -> Response:
        """Admission, then either queue a task or relay the answer; what no worker took is given back."""
        draft = draft_of(request) or AuditDraft(uuid.uuid4().hex, spec.audit_name, int(time.time() * 1000))
        created_ms = int(time.time() * 1000)
        # A consumer whose over-limit policy is `queue` may wait for room while its caller waits.
        wait_until = None if is_async else created_ms + int(self._timeout_s(request, False) * 1000)
        with _TRACER.start_as_current_span("policy"):
            admitted = await self._admission.admit(
                Submission(identity, spec, body, wait_until_ms=wait_until, needs=_route_needs(request)), draft
            )
        try:
            if is_async:
                return await self._tasks.accept(request, admitted.as_task(), webhook_url)
            deadline_ms = created_ms + int(self._timeout_s(request, admitted.stream) * 1000)
            return await self._dispatch(_Call(request, draft, deadline_ms), admitted)
        finally:
            self._admission.release(admitted)

    async def _dispatch(self, call: _Call, admitted: Admitted) -> Response:
        """Degrade if the model is in trouble, run the request, fall back if the model fails it."""
        draft = call.draft
        request_id = draft.request_id
        route = await self._degradation.route(call.request, admitted, draft)
        if isinstance(route, Response):
            return route  # queued as an async task, or answered from the cache
        admitted, degraded, probe = route.admitted, route.degraded, route.probe
        if degraded:
            draft.policy_actions.append(f"degraded:{degraded}")
        try:
            response = await self._run(call, admitted, request_id)
        except RemoteError as exc:
            # The model failed (not the request): the consumer's fallback chain may still answer.
            fallback = await self._degradation.after_failure(admitted, exc.status, draft)
            if fallback is None:
                raise
            degraded = f"fallback:{fallback.target.name}"
            draft.policy_actions.append(f"degraded:{degraded}:after:{exc.code.value}")
            admitted = fallback
            response = await self._run(call, fallback, f"{request_id}-fallback")
        if draft.body is not None and response.status_code == 200:
            self._degradation.remember(admitted, draft.body, request_id, probe)
        if degraded:
            response.headers[DEGRADED] = degraded
        if admitted.rule is not None:
            response.headers["x-modelbus-route"] = admitted.rule
        return response

    async def _run(self, call: _Call, admitted: Admitted, request_id: str) -> Response:
        """Queue the request for its target and relay the answer."""
        target = admitted.target.name
        with _TRACER.start_as_current_span(
            "enqueue",
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "nats",
                "messaging.operation.type": "send",
                "messaging.destination.name": target,
                "gen_ai.request.model": target,
            },
        ) as span:
            envelope = envelope_for(
                admitted,
                request_id,
                reply_to=self._bus.reply_subject(request_id),
                pulse=True,
                chunks_in_final=True,
                created_ms=int(time.time() * 1000),
                deadline_ms=call.deadline_ms,
                traceparent=traceparent_of(span),
            )
            call.draft.enqueued_ms = int(
                time.time() * 1000
            )  # handed to JetStream (a worker may beat the ack)
            reply = await self._bus.submit(envelope, admitted.body)
            call.draft.envelope = envelope
        try:
            if admitted.stream:
                return await self._stream(call.request, reply, call.draft, admitted.spec)
            return await self._complete(call.request, reply, call.draft)
        except BaseException:
            await reply.close()
            raise

    def _timeout_s(self, request: Request, stream: bool) -> float:
        """The client's own timeout bounds the deadline: a queued request never outlives its caller.

        A stream's keep-alives satisfy the SDK's read timeout, so that one only bounds plain calls.
        """
        names = ("x-modelbus-timeout",) if stream else ("x-modelbus-timeout", _SDK_TIMEOUT)
        for name in names:
            raw = request.headers.get(name)
            if raw is None:
                continue
            try:
                value = float(raw)
            except ValueError:
                raise APIError(400, f"header {name} must be a number of seconds", "invalid_header") from None
            if not value > 0:
                raise APIError(400, f"header {name} must be positive", "invalid_header")
            return min(value, self._settings.max_timeout_s)
        return self._settings.default_timeout_s

    async def _complete(self, request: Request, reply: ReplyStream, draft: AuditDraft) -> Response:
        try:
            with _interrupt_on_disconnect(request.receive, reply):
                draft.final, body = await _await_final(reply)
                draft.policy_actions.extend(draft.final.guard_events)
            draft.body, draft.start = body, reply.start
        except Interrupted:
            draft.cancelled, draft.start = True, reply.start
            await reply.cancel()
            return Response(status_code=499)  # nobody reads it: the client has gone
        except ModelbusError:
            await reply.cancel()
            raise
        finally:
            await reply.close()
        return Response(body, media_type="application/json", headers=_headers(reply))

    async def _stream(
        self, request: Request, reply: ReplyStream, draft: AuditDraft, spec: EndpointSpec
    ) -> Response:
        # Wait briefly for the first token, so the headers can name the worker and an early failure
        # (bad request, backend down) is still an HTTP status; a longer wait continues inside the
        # event stream with keep-alive comments.
        try:
            with _interrupt_on_disconnect(request.receive, reply):
                first = await _first_output(reply, self._settings.sse_keepalive_s)
        except Interrupted:
            draft.cancelled = True
            await reply.cancel()
            await reply.close()
            return Response(status_code=499)
        except ModelbusError:
            await reply.cancel()
            await reply.close()
            raise
        draft.start = reply.start
        event = named_event if spec.named_events else data_event
        head, finished = _render(first, reply, draft, event, spec.named_events)
        if finished:
            # The whole answer is here (a quick backend): one plain response, no streaming machinery.
            await reply.close()
            return Response(head, media_type="text/event-stream", headers={**SSE_HEADERS, **_headers(reply)})

        async def client_left() -> None:
            draft.cancelled = True
            await reply.cancel()

        events = self._events(reply, head if first else comment("queued"), draft, spec)
        return EventStreamResponse(events, _headers(reply), client_left)

    async def _events(
        self, reply: ReplyStream, head: bytes, draft: AuditDraft, spec: EndpointSpec
    ) -> AsyncIterator[bytes]:
        """`head` (the events of the first frames), then each later batch of frames as events."""
        event = named_event if spec.named_events else data_event
        try:
            if head:
                yield head
            while True:
                pending = await reply.frames(self._settings.sse_keepalive_s)
                if not pending:
                    yield comment("keep-alive")
                    continue
                out, finished = _render(pending, reply, draft, event, spec.named_events)
                if finished:
                    yield LastEvents(out)
                    return
                if out:
                    yield out
        except ModelbusError as exc:
            await reply.cancel()
            error = from_bus_error(exc)
            draft.error_code, draft.error_message = error.code, error.message
            body = error_body(error.status, error.message, error.code, error.param)
            yield error_event(body, error.status, spec.errors, spec.named_events)
        finally:
            await reply.close()


def _render(
    frames: list[tuple[Frame, bytes]],
    reply: ReplyStream,
    draft: AuditDraft,
    event: Callable[[bytes], bytes],
    named_events: bool,
) -> tuple[bytes, bool]:
    """The SSE events of `frames`, recorded in the audit draft, and whether the reply ended."""
    out: list[bytes] = []
    for frame, payload in frames:
        if isinstance(frame, ChunkFrame):
            if frame.pickup is not None:  # no start frame came: the same comment
                draft.start = frame.pickup
                out.append(_pickup_comment(frame.pickup))
            reply.mark_relayed()
            _chunk_events(payload, draft, event, out)
        elif isinstance(frame, FinalFrame):
            if frame.count:  # the stream's last chunks came with it
                if frame.pickup is not None:  # and nothing before them: the same comment
                    draft.start = frame.pickup
                    out.append(_pickup_comment(frame.pickup))
                _chunk_events(payload, draft, event, out)
            draft.final = frame
            draft.policy_actions.extend(frame.guard_events)
            if not named_events:  # Responses and Messages streams just end
                out.append(DONE)
            return b"".join(out), True
        elif isinstance(frame, StartFrame):
            draft.start = frame
            out.append(_pickup_comment(frame))
    return b"".join(out), False


def _chunk_events(
    payload: bytes, draft: AuditDraft, event: Callable[[bytes], bytes], out: list[bytes]
) -> None:
    lines = payload.split(b"\n")
    draft.chunks.extend(lines)
    out.extend(event(line) for line in lines)


def _pickup_comment(pickup: Pickup) -> bytes:
    return comment(f"worker={pickup.worker} queue_ms={pickup.queue_ms}")


def _route_needs(request: Request) -> RouteNeeds | None:
    """What the caller asks of a pool's route: `x-modelbus-max-wait-ms`, `x-modelbus-max-cost`."""
    found: dict[str, float] = {}
    for field, header in (("max_wait_ms", "x-modelbus-max-wait-ms"), ("max_cost", "x-modelbus-max-cost")):
        raw = request.headers.get(header)
        if raw is None:
            continue
        try:
            value = float(raw)
        except ValueError:
            raise APIError(400, f"header {header} must be a number", "invalid_header") from None
        if not value >= 0 or value == float("inf") or (field == "max_wait_ms" and value == 0):
            raise APIError(400, f"header {header} must be a positive number", "invalid_header")
        found[field] = value
    return RouteNeeds(**found) if found else None


async def _first_output(reply: ReplyStream, wait_s: float) -> list[tuple[Frame, bytes]]:
    """Frames up to and including the first chunk or final frame, or whatever came within wait_s."""
    give_up = time.monotonic() + wait_s
    frames: list[tuple[Frame, bytes]] = []
    while (left := give_up - time.monotonic()) > 0:
        frames += await reply.frames(left)
        if any(isinstance(frame, (ChunkFrame, FinalFrame)) for frame, _ in frames):
            break
    return frames


async def _await_final(reply: ReplyStream) -> tuple[FinalFrame, bytes]:
    while True:
        for frame, payload in await reply.frames():
            if isinstance(frame, FinalFrame):
                return frame, payload


# The disconnect watcher starts this long after the wait begins: most answers are in by then, and
# a timer costs a fraction of a task (created, run to its first wait, cancelled, run again). A
# client gone earlier is noticed when it starts: uvicorn's receive() then says so at once.
_WATCH_AFTER_S = 0.05


@contextmanager
def _interrupt_on_disconnect(receive: Receive, reply: ReplyStream) -> Iterator[None]:
    """While inside, a client disconnect interrupts the reply wait (one watcher task, no races)."""
    watcher: asyncio.Future[None] | None = None

    def interrupt(task: asyncio.Future[None]) -> None:
        if not task.cancelled():
            reply.interrupt()

    def watch() -> None:
        nonlocal watcher
        watcher = asyncio.ensure_future(_disconnected(receive))
        watcher.add_done_callback(interrupt)

    timer = asyncio.get_running_loop().call_later(_WATCH_AFTER_S, watch)
    try:
        yield
    finally:
        timer.cancel()
        if watcher is not None:
            watcher.cancel()


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _headers(reply: ReplyStream) -> dict[str, str]:
    headers = {"x-request-id": reply.request_id, "x-modelbus-model": reply.envelope.target}
    start = reply.start
    if start is not None:
        headers["x-modelbus-version"] = start.version
        headers["x-modelbus-worker"] = start.worker
        headers["x-modelbus-queue-ms"] = str(start.queue_ms)
        if start.affinity is not None:
            headers["x-modelbus-affinity"] = start.affinity
    return headers
