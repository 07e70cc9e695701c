"""Capacity-bounded pulling from a JetStream consumer.

The worker keeps at most one pull request open and asks in it for exactly its free slots, so

    in flight + messages still owed by the open pull request <= capacity

holds at every moment and the worker can never hold more than its capacity, whatever the timing.
Every delivered message belongs to the one open request (JetStream delivers messages under their
own subject, so several open requests could not be told apart). The request closes when its batch
is filled, when a `408` (expired) or `409` (dropped by the server) status arrives, or, if that
status was lost across a reconnect, shortly after it expired on the server.

One request at a time costs no latency: an unfilled request means the queue is empty, so new
messages go straight to it; a filled one closes at once and the next pull asks for every free slot.

With a batch lane, interactive work always comes first: batch messages are only taken right after
an interactive pull found nothing (an immediate `no_wait` check, or an expired wait), only up to
`batch_share` of the capacity, and the interactive queue is checked again before each batch pull.
The rest of the capacity always stays open to interactive requests.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable

import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

log = logging.getLogger(__name__)

Handler = Callable[[Msg], Awaitable[None]]
_EXPIRY_GRACE_S = 2.0
_BATCH_POLL_MIN_S, _BATCH_POLL_MAX_S = 0.05, 2.0


class CapacityPuller:
    def __init__(
        self,
        nc: NATS,
        stream: str,
        consumer: str,
        capacity: int,
        handler: Handler,
        pull_expires_s: float = 5.0,
        batch_consumer: str | None = None,
        batch_share: float = 0.75,
        api_prefix: str = "$JS.API",
    ) -> None:
        self._nc = nc
        self._next_subject = f"{api_prefix}.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._batch_subject = (
            f"{api_prefix}.CONSUMER.MSG.NEXT.{stream}.{batch_consumer}" if batch_consumer else None
        )
        self._batch_limit = max(1, int(capacity * batch_share))
        self._batch_next = False  # the interactive queue was just found empty
        self._batch_pending = False  # the last batch pull found work, so there may be more
        self._batch_poll_s = _BATCH_POLL_MIN_S
        self._open_is_batch = False
        self._open_no_wait = False
        self._open_received = 0
        self.in_flight_batch = 0
        self.capacity = capacity
        self._handler = handler
        self._expires_s = pull_expires_s
        self._inbox = nc.new_inbox()
        self._ids = itertools.count()
        self._open: str | None = None  # token of the open pull request
        self._written_off_at = 0.0  # when the open request is given up for lost
        self.owed = 0  # messages the open request may still deliver
        self._wake = asyncio.Event()
        self._stopping = False
        self._backoff_until = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self.in_flight = 0
        self.max_in_flight = 0
        self.received = 0

    @property
    def free_slots(self) -> int:
        return self.capacity - self.in_flight

    async def run(self) -> None:
        """Pull and dispatch until `stop()`; then wait for in-flight work to finish."""
        sub = await self._nc.subscribe(f"{self._inbox}.*", cb=self._on_message)
        try:
            while not self._stopping:
                now = time.monotonic()
                if self._open is not None and now >= self._written_off_at:
                    log.info("pull request %s lost (no status by its expiry); written off", self._open)
                    self._close()
                free = self.capacity - self.in_flight
                if self._open is None and free > 0 and now >= self._backoff_until:
                    await self._pull_next(free)
                await self._sleep_until_needed()
        finally:
            await sub.unsubscribe()
            await self._finish_tasks()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def _pull_next(self, free: int) -> None:
        if self._batch_subject is None:
            await self._pull(self._next_subject, free, self._expires_s)
            return
        room = min(free, self._batch_limit - self.in_flight_batch)
        if self._batch_next and room > 0:
            await self._pull(self._batch_subject, room, None, batch_lane=True)
        elif self._batch_pending:
            await self._pull(self._next_subject, free, None)  # interactive first, without waiting
        else:
            await self._pull(self._next_subject, free, self._batch_poll_s)

    async def _pull(
        self, subject: str, batch: int, expires_s: float | None, batch_lane: bool = False
    ) -> None:
        """One pull request; `expires_s=None` asks only for what is there now (`no_wait`)."""
        token = str(next(self._ids))
        self._open = token
        self.owed = batch
        self._open_is_batch, self._open_no_wait, self._open_received = batch_lane, expires_s is None, 0
        wait = expires_s if expires_s is not None else 1.0
        self._written_off_at = time.monotonic() + wait + _EXPIRY_GRACE_S
        request: dict[str, object] = {"batch": batch}
        if expires_s is None:
            request["no_wait"] = True
        else:
            request["expires"] = int(expires_s * 1e9)
        try:
            await self._nc.publish(subject, orjson.dumps(request), reply=f"{self._inbox}.{token}")
        except Exception as exc:  # noqa: BLE001 - disconnected: retried after a short pause
            log.warning("pull request not sent: %s", exc)
            self._close()
            self._backoff_until = time.monotonic() + 0.5

    def _close(self, filled: bool = False) -> None:
        if self._open is not None and self._batch_subject is not None:
            self._lane_turn(filled)
        self._open = None
        self.owed = 0

    def _lane_turn(self, filled: bool) -> None:
        """Decide which lane the next pull asks (see the module docstring)."""
        if self._open_is_batch:
            self._batch_next = False
            self._batch_pending = self._open_received > 0
            grown = min(self._batch_poll_s * 2, _BATCH_POLL_MAX_S)
            self._batch_poll_s = _BATCH_POLL_MIN_S if self._batch_pending else grown
        else:
            # A filled interactive pull means interactive work is waiting: keep serving it.
            self._batch_next = not filled

    def _wake_at(self, now: float) -> float:
        """When the loop must look again even if nothing wakes it."""
        wake_at = [self._written_off_at] if self._open is not None else [now + self._expires_s]
        if self._backoff_until > now:
            wake_at.append(self._backoff_until)
        return min(wake_at)

    async def _sleep_until_needed(self) -> None:
        now = time.monotonic()
        try:
            async with asyncio.timeout(max(self._wake_at(now) - now, 0.0)):
                await self._wake.wait()
        except TimeoutError:
            pass
        self._wake.clear()

    async def _on_message(self, msg: Msg) -> None:
        token = msg.subject.rsplit(".", 1)[-1]
        status = msg.headers.get("Status") if msg.headers else None
        if status is not None and not msg.reply:
            self._on_status(token, status, msg.headers or {})
            return
        batch_lane = self._open_is_batch
        if self._open is not None:
            self.owed -= 1
            self._open_received += 1
            if self.owed <= 0:
                self._close(filled=True)  # the server has closed it too
                self._wake.set()
        else:
            # Only possible for a request written off while its messages were in transit.
            log.warning("message for a closed pull request; running it anyway")
        if batch_lane:
            self.in_flight_batch += 1
        self.in_flight += 1
        self.received += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        task = asyncio.create_task(self._run(msg, batch_lane))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_status(self, token: str, status: str, headers: dict[str, str]) -> None:
        if status == "100" or token != self._open:
            return  # idle heartbeat, or the status of a request already closed
        self._close()
        if status == "409":
            # Leadership change, consumer deleted or similar: do not spin on it.
            log.info("pull closed by the server: %s", headers.get("Description", ""))
            self._backoff_until = time.monotonic() + 0.25
        self._wake.set()

    async def _run(self, msg: Msg, batch_lane: bool) -> None:
        try:
            await self._handler(msg)
        except Exception:
            log.exception("request handler failed")
        finally:
            self.in_flight -= 1
            if batch_lane:
                self.in_flight_batch -= 1
            self._wake.set()

    async def _finish_tasks(self) -> None:
        """Wait for in-flight handlers; if told to stop waiting, cancel them and still await them."""
        cancelled = False
        while self._tasks:
            try:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            except asyncio.CancelledError:
                cancelled = True
                for task in self._tasks:
                    task.cancel()
        if cancelled:
            raise asyncio.CancelledError
