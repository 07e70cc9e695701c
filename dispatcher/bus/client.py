"""The producer side of the bus: publish a request durably and read its reply frames.

One `BusClient` per ingress process. It subscribes once to its own reply inbox
(`<ns>.reply.<ingress>.*`) and routes frames to the waiting request by id, so a request costs no
subscription round trip of its own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable

import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from dispatcher.bus.bus_settings import BusSettings
from dispatcher.bus.connection import publish_durably
from dispatcher.bus.reply_stream import Frame, ReplySequencer, decode_frame
from dispatcher.bus.stored_request import Stored, still_stored
from dispatcher.bus.subjects import Subjects
from dispatcher.errors import (
    DeadlineExceeded,
    Interrupted,
    RemoteError,
    RequestTooLarge,
    WorkerLost,
)
from dispatcher.scheduling.affinity import AFFINITY_HEADER, ring
from schemas.envelope import (
    ChunkFrame,
    ErrorFrame,
    FinalFrame,
    HeartbeatFrame,
    Pickup,
    RequestEnvelope,
    StartFrame,
)

log = logging.getLogger(__name__)

_STRAY_MEMORY = 4096
# A stream silent for idle_timeout_s gets a further idle_timeout_s / this to hear from its worker
# before it is called lost (see ReplyStream._caught_up).
_GRACE_DIVISOR = 4
# A private object, compared by identity: no message from the network can be this one.
_INTERRUPT = bytes(bytearray(b"\x00interrupt"))


class ReplyStream:
    """Frames of one request's reply, in order, with the deadline and worker liveness enforced."""

    def __init__(
        self,
        client: BusClient,
        envelope: RequestEnvelope,
        queue: asyncio.Queue[bytes],
        stored: Stored | None = None,
        reconnects: int | None = None,
    ) -> None:
        self.envelope = envelope
        # Who picked the request up: from the start frame, or from the final frame when none was sent.
        self.start: Pickup | None = None
        self._client = client
        self._queue = queue
        self._sequencer = ReplySequencer()
        self._deadline = time.monotonic() + (envelope.deadline_ms - envelope.created_ms) / 1000
        self._last_activity: float | None = None  # None until a worker has picked the request up
        self._relayed = False
        self._done = False
        self._pending_error: ErrorFrame | None = None
        # Reply frames are core NATS: any that arrive while this ingress is reconnecting are gone.
        self._reconnects = client.reconnects if reconnects is None else reconnects
        self._stored = stored
        self._probe_at = 0.0  # when to look in JetStream again for a request silent across a reconnect
        self._released_unheard = False  # staged, released, and still nothing heard at the last look

    @property
    def request_id(self) -> str:
        return self.envelope.id

    def interrupt(self) -> None:
        """Make the pending (or next) `frames()` call raise Interrupted; safe from callbacks."""
        self._queue.put_nowait(_INTERRUPT)

    def mark_relayed(self) -> None:
        """Part of the answer has reached the client: a redelivery can no longer be used."""
        self._relayed = True

    async def frames(self, wait_s: float | None = None) -> list[tuple[Frame, bytes]]:
        """Return the next in-order frames (start, chunk, final); [] if `wait_s` passed first.

        Raises RemoteError for an error frame, DeadlineExceeded, WorkerLost or StreamBroken.
        """
        if self._pending_error is not None:
            raise self._remote_error(self._pending_error)
        give_up = None if wait_s is None else time.monotonic() + wait_s
        while True:
            now = time.monotonic()
            if now >= self._deadline:
                raise DeadlineExceeded("no answer before the request deadline")
            self._sequencer.check_gap(now)
            if self._last_activity is None:
                self._pulsed(now)  # a plain request sends no start frame: pulses say it was picked up
            if self._last_activity is None and self._client.reconnects != self._reconnects:
                if await self._answered_unheard(now):
                    raise WorkerLost("the answer was lost while the gateway reconnected to NATS")
                now = time.monotonic()
            if self._last_activity is not None and now - self._last_activity > self._client.idle_timeout_s:
                if self._pulsed(now) or (self._relayed and await self._caught_up()):
                    continue
                if self._relayed:
                    raise WorkerLost("the worker stopped answering in the middle of the reply")
                if self._client.reconnects != self._reconnects:
                    # The worker may have finished (and acked) while this ingress was away from NATS,
                    # its answer published to nobody: no redelivery would ever come. Retryable.
                    raise WorkerLost("the answer may have been lost while the gateway reconnected to NATS")
                # Nothing reached the client yet: JetStream will redeliver to another worker.
                log.info("request %s: worker silent, waiting for redelivery", self.request_id)
                self._last_activity = None
            if give_up is not None and now >= give_up:
                return []
            limits = [self._deadline, give_up, self._sequencer.gap_deadline]
            # Silence is judged from the last frame or pulse; before any, pulses are looked for
            # at the same pace (one timer per waiting request every idle_timeout_s).
            limits.append((self._last_activity or now) + self._client.idle_timeout_s)
            wake = min(t for t in limits if t is not None)
            try:
                async with asyncio.timeout(max(wake - now, 0.0)):
                    data = await self._queue.get()
            except TimeoutError:
                continue
            ready = self._accept(data)
            # Drain what else has arrived so a burst of tokens leaves in one write.
            while not self._queue.empty():
                ready.extend(self._accept(self._queue.get_nowait()))
            if ready:
                return self._check(ready)

    def _pulsed(self, now: float) -> bool:
        """A recent pulse named this request (current attempt) after its last frame: the worker is
        alive. Only a recent one: after a silence was noted, an old pulse must not revive it."""
        pulsed = self._client.pulse_at(self.request_id, self._sequencer.attempt)
        if pulsed is None or now - pulsed > self._client.idle_timeout_s:
            return False
        if self._last_activity is not None and pulsed <= self._last_activity:
            return False
        self._last_activity = pulsed
        return True

    async def _caught_up(self) -> bool:
        """Before calling a worker lost: an event loop that stalled (a busy machine), not a silent
        worker, may hold its frames or pulses unread on the socket. A short grace lets the reader
        deliver them; True if anything for this request was among them.

        Not a PING/PONG flush: nats-py's `flush(timeout)` leaves a cancelled future behind on
        timeout, and the late PONG then kills the connection's read loop (seen with thousands of
        streams on a loaded machine)."""
        await asyncio.sleep(self._client.idle_timeout_s / _GRACE_DIVISOR)
        if not self._queue.empty():
            self._last_activity = time.monotonic()  # frames are waiting: read them next
            return True
        return self._pulsed(time.monotonic())

    async def _answered_unheard(self, now: float) -> bool:
        """Nothing heard from any worker, and this ingress reconnected to NATS since the publish: a
        worker that answered meanwhile (a plain request sends no start frame, and a fast one no
        pulse) published its only frame to nobody, acked, and nothing will ever come. Every
        `idle_timeout_s`, ask JetStream whether the request's message is still stored (queued or
        unsettled: keep waiting) or gone (settled: its answer was lost). Costs one lookup per
        silent request per interval, only after a reconnect.

        A staged request (fair share) gone from the staging stream was released under a sequence
        not known here: called lost only if still unheard one interval later, by when a worker
        running it would have pulsed (heartbeat_s < idle_timeout_s) and a finished one been heard;
        the share feeder releases only into free slots, so it does not wait long queued."""
        if self._stored is None or now < self._probe_at:
            return False
        self._probe_at = now + self._client.idle_timeout_s
        present = await self._client.still_stored(self._stored)
        if present is not False:
            return False
        if self._stored.staged and not self._released_unheard:
            self._released_unheard = True
            return False
        # Frames published just after the resubscription may still be on their way.
        await asyncio.sleep(self._client.idle_timeout_s / _GRACE_DIVISOR)
        return self._queue.empty() and not self._pulsed(time.monotonic())

    def _accept(self, data: bytes) -> list[tuple[Frame, bytes]]:
        if data is _INTERRUPT:
            raise Interrupted("the client stopped waiting")
        try:
            frame, payload = decode_frame(data)
        except ValueError:
            log.warning("request %s: undecodable reply frame dropped", self.request_id)
            return []
        if frame.attempt >= self._sequencer.attempt:
            self._last_activity = time.monotonic()
        if isinstance(frame, HeartbeatFrame):
            return []
        if frame.attempt > self._sequencer.attempt and self._relayed:
            raise WorkerLost("the request was redelivered after part of the answer was relayed")
        return self._sequencer.push(frame, payload)

    def _check(self, ready: list[tuple[Frame, bytes]]) -> list[tuple[Frame, bytes]]:
        for index, (frame, _) in enumerate(ready):
            if isinstance(frame, StartFrame):
                self.start = frame
            elif isinstance(frame, ChunkFrame):
                if frame.pickup is not None:
                    self.start = frame.pickup
            elif isinstance(frame, ErrorFrame):
                self._done = True
                if index:
                    # Deliver what came before the error first; the error surfaces next call.
                    self._pending_error = frame
                    return ready[:index]
                raise self._remote_error(frame)
            elif isinstance(frame, FinalFrame):
                self._done = True
                if frame.pickup is not None:
                    self.start = frame.pickup
                return ready[: index + 1]
        return ready

    @staticmethod
    def _remote_error(frame: ErrorFrame) -> RemoteError:
        return RemoteError(frame)

    async def cancel(self) -> None:
        """Tell workers to stop: the client is gone or the deadline passed."""
        if not self._done:
            self._done = True
            await self._client.cancel(self.request_id)

    async def close(self) -> None:
        self._client.inbox_close(self.request_id)


class BusClient:
    def __init__(
        self,
        nc: NATS,
        subjects: Subjects,
        settings: BusSettings,
        ingress_id: str,
        msg_ttl: bool,
        *,
        shared_inbox: bool = False,
        share_bucket: Callable[[str], str] | None = None,
        affinity_bucket: Callable[[RequestEnvelope], int | None] | None = None,
    ) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._subjects = subjects
        self._settings = settings
        self._ingress_id = ingress_id
        self._msg_ttl = msg_ttl
        self._routes: dict[str, asyncio.Queue[bytes]] = {}
        # request id -> (attempt, monotonic time) of the last pulse naming it (workers batch liveness)
        self._pulses: dict[str, tuple[int, float]] = {}
        self._strays: OrderedDict[str, None] = OrderedDict()
        self._sub: object | None = None
        # Several processes may read one inbox (dispatcher replicas): replies to another's request
        # are then not strays to cancel, just not ours.
        self._shared_inbox = shared_inbox
        self.idle_timeout_s = settings.idle_timeout_s
        # consumer -> fair-share bucket; None: straight to the FIFO request subject
        self._share_bucket = share_bucket if settings.fair_share else None
        # request -> prefix-affinity bucket (dispatcher/scheduling/affinity.py); None: the lane's FIFO subject
        self._affinity_bucket = affinity_bucket

    @property
    def reconnects(self) -> int:
        return int(self._nc.stats.get("reconnects", 0))

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(
            self._subjects.reply_inbox(self._ingress_id),
            cb=self._on_reply,
            # A slow consumer drops frames silently; size the buffer for bursts of many streams.
            pending_msgs_limit=1_000_000,
            pending_bytes_limit=512 * 1024 * 1024,
        )

    @property
    def max_payload(self) -> int:
        return int(self._nc.max_payload)

    def reply_subject(self, request_id: str) -> str:
        return self._subjects.reply(self._ingress_id, request_id)

    async def _on_reply(self, msg: Msg) -> None:
        if self._subjects.is_pulse(msg.subject):
            self._on_pulse(msg.data)
            return
        request_id = self._subjects.request_id_from(msg.subject)
        queue = self._routes.get(request_id)
        if queue is not None:
            queue.put_nowait(msg.data)
        elif not self._shared_inbox and request_id not in self._strays:
            # Nobody waits for this request any more (client left, deadline passed): stop its worker.
            self._strays[request_id] = None
            if len(self._strays) > _STRAY_MEMORY:
                self._strays.popitem(last=False)
            await self.cancel(request_id)

    def _on_pulse(self, data: bytes) -> None:
        """A worker's liveness for all of its requests that wait here: `[[request id, attempt], ...]`."""
        try:
            alive = orjson.loads(data)
        except orjson.JSONDecodeError:
            log.warning("undecodable pulse dropped")
            return
        now = time.monotonic()
        for item in alive if isinstance(alive, list) else ():
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[1], int)):
                continue
            request_id, attempt = item
            # A late pulse from an earlier attempt's worker must not hide the current one's silence.
            if request_id in self._routes and attempt >= self._pulses.get(request_id, (0, 0.0))[0]:
                self._pulses[request_id] = (attempt, now)

    def pulse_at(self, request_id: str, attempt: int) -> float | None:
        """When a pulse last named this request at `attempt` or later."""
        seen = self._pulses.get(request_id)
        return seen[1] if seen is not None and seen[0] >= attempt else None

    def inbox_close(self, request_id: str) -> None:
        self._routes.pop(request_id, None)
        self._pulses.pop(request_id, None)

    async def cancel(self, request_id: str) -> None:
        try:
            await self._nc.publish(self._subjects.cancel(request_id), b"")
        except Exception as exc:  # noqa: BLE001 - cancellation is best effort; deadlines backstop it
            log.warning("cancel of %s not sent: %s", request_id, exc)

    async def submit(self, envelope: RequestEnvelope, raw_payload: bytes | None = None) -> ReplyStream:
        """Persist the request in JetStream and return its reply stream.

        The reply route exists before the publish, so no frame can arrive unrouted.
        """
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._routes[envelope.id] = queue
        reconnects = self.reconnects  # a reconnect during the publish counts too
        try:
            stored = await self._store(envelope, raw_payload)
        except BaseException:
            self.inbox_close(envelope.id)
            raise
        return ReplyStream(self, envelope, queue, stored, reconnects)

    async def enqueue(self, envelope: RequestEnvelope, raw_payload: bytes | None = None) -> bool:
        """Persist the request in JetStream; its replies go wherever `envelope.reply_to` says.
        Returns True if the stream already had it (a retry of an earlier publish)."""
        return (await self._store(envelope, raw_payload)).duplicate

    async def still_stored(self, stored: Stored) -> bool | None:
        return await still_stored(self._js, stored)

    async def _store(self, envelope: RequestEnvelope, raw_payload: bytes | None) -> Stored:
        """Publish the request durably: to its lane's subject, its affinity bucket, or (fair share)
        its consumer's staging subject.

        Publishes are retried with the same `Nats-Msg-Id` (the request id), so a retry after a lost
        PubAck is deduplicated by the stream rather than queued twice. `raw_payload`, the payload
        as JSON the client sent it, saves serializing it a second time.
        """
        if raw_payload is None:
            data = envelope.model_dump_json().encode()
        else:
            head = envelope.model_dump_json(exclude={"payload"}).encode()
            data = head[:-1] + b',"payload":' + raw_payload + b"}"
        if len(data) > self.max_payload:
            raise RequestTooLarge(
                f"request of {len(data)} bytes exceeds the bus limit of {self.max_payload} bytes"
            )
        headers = {"Nats-Msg-Id": envelope.id}
        ttl_s = max(1, (envelope.deadline_ms - envelope.created_ms + 999) // 1000)
        if self._msg_ttl:
            headers["Nats-TTL"] = f"{ttl_s}s"
        max_s = min(10.0, float(ttl_s))
        affinity = self._affinity_bucket(envelope) if self._affinity_bucket is not None else None
        if self._share_bucket is None:
            if affinity is None:
                subject = self._subjects.request(envelope.target, envelope.version, envelope.lane)
                return Stored.of(await publish_durably(self._js, subject, data, headers, max_s))
            subject = self._subjects.affinity_request(envelope.target, envelope.version, affinity)
            stored = Stored.of(await publish_durably(self._js, subject, data, headers, max_s))
            await ring(self._nc, self._subjects, envelope.target, envelope.version, affinity)
            return stored
        if affinity is not None:
            headers[AFFINITY_HEADER] = str(affinity)  # the share feeder releases it into its bucket
        bucket = self._share_bucket(envelope.consumer)
        subject = self._subjects.share(envelope.target, envelope.version, envelope.lane, bucket)
        stored = Stored.of(await publish_durably(self._js, subject, data, headers, max_s), staged=True)
        try:
            await self._nc.publish(self._subjects.share_bell, b"")
        except Exception as exc:  # noqa: BLE001 - the feeder also rescans on its own every second
            log.debug("share bell not rung: %s", exc)
        return stored
