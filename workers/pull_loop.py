"""Capacity-bounded pulling from a JetStream consumer.

The worker offers the server exactly its free slots and only asks for more while

    in flight + messages still owed by open pull requests < capacity

so it can never hold more than its capacity, whatever the timing. The owed count is exact:
every delivered message lowers it by one, and the status that closes a pull request (`408` when it
expires, `409` when the server drops it) says in `Nats-Pending-Messages` how many it left unsent.
JetStream delivers messages under their own subject, so they cannot be told apart by request; the
count does not need to. If a closing status is lost (e.g. across a reconnect), the request is
written off at its expiry by capping the owed count at what the remaining open requests could
still send, which keeps the bound safe.
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
_PENDING = "Nats-Pending-Messages"


class CapacityPuller:
    def __init__(
        self,
        nc: NATS,
        stream: str,
        consumer: str,
        capacity: int,
        handler: Handler,
        pull_expires_s: float = 10.0,
    ) -> None:
        self._nc = nc
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self.capacity = capacity
        self._handler = handler
        self._expires_s = pull_expires_s
        self._inbox = nc.new_inbox()
        self._ids = itertools.count()
        self._open: dict[str, tuple[int, float]] = {}  # token -> (batch, written off after)
        self.owed = 0
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
                self._expire_lost_requests()
                wanted = self.capacity - self.in_flight - self.owed
                now = time.monotonic()
                if wanted > 0 and now >= self._backoff_until:
                    await self._pull(wanted)
                await self._sleep_until_needed()
        finally:
            await sub.unsubscribe()
            await self._finish_tasks()

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

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def _pull(self, batch: int) -> None:
        token = str(next(self._ids))
        self._open[token] = (batch, time.monotonic() + self._expires_s + _EXPIRY_GRACE_S)
        self.owed += batch
        request = {"batch": batch, "expires": int(self._expires_s * 1e9)}
        try:
            await self._nc.publish(self._next_subject, orjson.dumps(request), reply=f"{self._inbox}.{token}")
        except Exception as exc:  # noqa: BLE001 - disconnected: the credits come back at expiry
            log.warning("pull request not sent: %s", exc)
            self._backoff_until = time.monotonic() + 0.5

    async def _sleep_until_needed(self) -> None:
        timeouts = [expiry for _, expiry in self._open.values()]
        if self._backoff_until > time.monotonic():
            timeouts.append(self._backoff_until)
        wait = (min(timeouts) - time.monotonic()) if timeouts else self._expires_s
        try:
            async with asyncio.timeout(max(wait, 0.0)):
                await self._wake.wait()
        except TimeoutError:
            pass
        self._wake.clear()

    def _expire_lost_requests(self) -> None:
        now = time.monotonic()
        lost = [token for token, (_, expiry) in self._open.items() if expiry <= now]
        for token in lost:
            self._write_off(token)

    def _write_off(self, token: str) -> None:
        """Close a request whose unsent count is unknown: cap owed at what the others can send."""
        self._open.pop(token, None)
        self.owed = min(self.owed, sum(batch for batch, _ in self._open.values()))

    async def _on_message(self, msg: Msg) -> None:
        status = msg.headers.get("Status") if msg.headers else None
        if status is not None and not msg.reply:
            self._on_status(msg.subject.rsplit(".", 1)[-1], status, msg.headers or {})
            return
        self.owed = max(0, self.owed - 1)
        self.in_flight += 1
        self.received += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        task = asyncio.create_task(self._run(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_status(self, token: str, status: str, headers: dict[str, str]) -> None:
        if status == "100":
            return  # idle heartbeat
        if token not in self._open:
            return  # already written off
        unsent = headers.get(_PENDING)
        if unsent is not None and unsent.isdigit():
            del self._open[token]
            self.owed = max(0, self.owed - int(unsent))
        else:
            self._write_off(token)
        if status == "409":
            # Leadership change, consumer deleted, too many waiting pulls: do not spin.
            log.info("pull closed by the server: %s", headers.get("Description", ""))
            self._backoff_until = time.monotonic() + 0.25
        self._wake.set()

    async def _run(self, msg: Msg) -> None:
        try:
            await self._handler(msg)
        except Exception:
            log.exception("request handler failed")
        finally:
            self.in_flight -= 1
            self._wake.set()
