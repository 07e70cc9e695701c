"""Publishing audit events to JetStream off the request path, pipelined.

`emit()` never blocks or fails the request that produced the event: events queue in memory and a
background task publishes them without waiting for each PubAck in turn. Up to `window` events are
unconfirmed at once; their acks arrive on one inbox subscription (no task, no request round trip
per event). An event keeps its place in the window until JetStream confirms it: one whose ack
fails, or does not come within `ack_timeout_s`, is published again after a backoff with the same
`Nats-Msg-Id` (the event id), so a retry whose first copy was stored after all is deduplicated by
the stream rather than stored twice. While the window is full nothing new is sent (back-pressure):
the bounded backlog takes the events, and only after a long broker outage drops and counts them.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging

import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from dispatcher.bus.subjects import Subjects
from dispatcher.errors import AckRefused
from schemas.audit import AuditEvent

log = logging.getLogger(__name__)

_FIRST_DELAY_S = 0.1
_MAX_DELAY_S = 5.0


class AuditPublisher:
    def __init__(
        self,
        nc: NATS,
        subjects: Subjects,
        source: str,
        backlog: int = 100_000,
        window: int = 256,
        ack_timeout_s: float = 5.0,
    ) -> None:
        self._nc = nc
        self._subject = subjects.audit(source)
        self._queue: asyncio.Queue[AuditEvent] = asyncio.Queue(maxsize=backlog)
        # Events that already hold a window slot and are due to be sent again.
        self._again: asyncio.Queue[tuple[str, bytes, float]] = asyncio.Queue()
        self._slots = asyncio.Semaphore(window)
        self._ack_timeout_s = ack_timeout_s
        self._unconfirmed: dict[str, bytes] = {}  # event id -> payload, while it holds a slot
        self._acks: dict[str, asyncio.Future[None]] = {}  # reply token -> the ack it waits for
        self._tokens = itertools.count()
        self._inbox: str | None = None
        self._idle = asyncio.Event()
        self.published = 0
        self.dropped = 0
        self.retried = 0

    def emit(self, event: AuditEvent) -> None:
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            # Only after a long broker outage; counted and logged so the gap is visible.
            self.dropped += 1
            log.error("audit backlog full: event %s dropped", event.event_id)

    @property
    def backlog(self) -> int:
        return self._queue.qsize()

    @property
    def unconfirmed(self) -> int:
        """Events sent or due to be sent again, not yet confirmed by JetStream (at most `window`)."""
        return len(self._unconfirmed)

    async def run(self) -> None:
        """Publish until cancelled; unconfirmed events are retried, never skipped."""
        if self._inbox is None:
            inbox = self._nc.new_inbox() + "."
            await self._nc.subscribe(inbox + "*", cb=self._on_ack)
            self._inbox = inbox
        async with asyncio.TaskGroup() as group:
            group.create_task(self._send_again())
            while True:
                event = await self._queue.get()
                try:
                    await self._slots.acquire()  # back-pressure: the window is full
                except asyncio.CancelledError:
                    self.emit(event)  # stopping: back in line for flush()
                    raise
                data = event.model_dump_json().encode()
                self._unconfirmed[event.event_id] = data
                await self._send(event.event_id, data, _FIRST_DELAY_S)

    async def flush(self, timeout: float) -> None:
        """Best effort at shutdown: publish what is queued and wait for its acks within `timeout`."""
        try:
            async with asyncio.timeout(timeout):
                pump = asyncio.ensure_future(self.run())
                try:
                    while self._queue.qsize() or self._unconfirmed:
                        if pump.done():
                            pump.result()  # raises what stopped it
                        self._idle.clear()
                        await self._idle.wait()
                finally:
                    pump.cancel()
                    await asyncio.gather(pump, return_exceptions=True)
        except TimeoutError:
            log.error(
                "audit flush timed out with %d events unpublished",
                self._queue.qsize() + len(self._unconfirmed),
            )

    async def _send_again(self) -> None:
        while True:
            event_id, data, delay = await self._again.get()
            await self._send(event_id, data, delay)

    async def _send(self, event_id: str, data: bytes, delay: float) -> None:
        assert self._inbox is not None
        token = str(next(self._tokens))
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._acks[token] = ack
        try:
            await self._nc.publish(
                self._subject, data, reply=self._inbox + token, headers={"Nats-Msg-Id": event_id}
            )
        except asyncio.CancelledError:
            del self._acks[token]
            self._again.put_nowait((event_id, data, delay))  # it keeps its slot: flush() sends it
            raise
        except Exception as exc:  # noqa: BLE001 - not connected, buffer full: keep the event, retry
            del self._acks[token]
            self._failed(event_id, data, delay, exc)
            return
        timer = asyncio.get_running_loop().call_later(self._ack_timeout_s, ack.cancel)
        ack.add_done_callback(functools.partial(self._settled, token, event_id, data, delay, timer))

    def _settled(
        self,
        token: str,
        event_id: str,
        data: bytes,
        delay: float,
        timer: asyncio.TimerHandle,
        ack: asyncio.Future[None],
    ) -> None:
        timer.cancel()
        self._acks.pop(token, None)
        if ack.cancelled():
            self._failed(event_id, data, delay, TimeoutError(f"no ack within {self._ack_timeout_s}s"))
        elif (exc := ack.exception()) is not None:
            self._failed(event_id, data, delay, exc)
        else:
            self.published += 1
            del self._unconfirmed[event_id]
            self._slots.release()
            if not self._unconfirmed and self._queue.empty():
                self._idle.set()

    def _failed(self, event_id: str, data: bytes, delay: float, exc: BaseException) -> None:
        """The event keeps its slot and goes out again after `delay`."""
        self.retried += 1
        # Once per event at warning level: a broker outage would otherwise log every slot every retry.
        level = logging.WARNING if delay == _FIRST_DELAY_S else logging.DEBUG
        log.log(level, "audit event %s not yet published: %s", event_id, exc or type(exc).__name__)
        again = (event_id, data, min(delay * 2, _MAX_DELAY_S))
        asyncio.get_running_loop().call_later(delay, self._again.put_nowait, again)

    async def _on_ack(self, msg: Msg) -> None:
        ack = self._acks.get(msg.subject.rsplit(".", 1)[-1])
        if ack is None or ack.done():
            return  # a late ack of a publish already timed out (and sent again)
        if msg.headers and msg.headers.get("Status") == "503":
            ack.set_exception(AckRefused("no stream answered (no responders)"))
            return
        try:
            answer = orjson.loads(msg.data)
        except orjson.JSONDecodeError:
            ack.set_exception(AckRefused("undecodable ack"))
            return
        if isinstance(answer, dict) and "error" in answer:
            ack.set_exception(AckRefused(str(answer["error"])))
        else:
            ack.set_result(None)
