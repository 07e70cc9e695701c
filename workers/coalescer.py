"""Request coalescing for embeddings: compatible requests that arrive within a short window become
one backend call, whose results are split back. Embedding models run several times faster on a
batch than one text at a time, so this turns many small requests into the batches GPUs want.

Requests are compatible when they ask for the same model, encoding format and dimensions; token-id
inputs are passed through uncoalesced. A batch leaves when its window ends or it holds
`max_inputs` inputs — but only while no earlier batch of the same kind is still at the backend: a
busy backend lets the next batch keep growing (up to `max_inputs`) instead of queueing small ones
behind it, which is what keeps batches large under load. When idle, the added latency is at most
the window.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from schemas.envelope import Endpoint
from workers.backends.base import Backend, Json

Key = tuple[Any, Any, Any]


@dataclass
class _Batch:
    payload: Json  # the first request's body; only `input` differs between members
    inputs: list[str] = field(default_factory=list)
    members: list[tuple[int, int, asyncio.Future[Json]]] = field(default_factory=list)  # offset, count
    timer: asyncio.TimerHandle | None = None
    due: bool = False  # the window has passed; it leaves as soon as the backend is free


class EmbeddingCoalescer:
    def __init__(self, backend: Callable[[], Backend], window_s: float, max_inputs: int) -> None:
        self._backend = backend
        self._window_s = window_s
        self._max_inputs = max_inputs
        self._open: dict[Key, _Batch] = {}
        self._busy: set[Key] = set()  # kinds with a call at the backend right now
        self._flushing: set[asyncio.Task[None]] = set()
        self.backend_calls = 0

    async def embed(self, payload: Json) -> Json:
        raw = payload.get("input")
        texts = [raw] if isinstance(raw, str) else raw
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            self.backend_calls += 1
            return await self._backend().complete(Endpoint.EMBEDDINGS, payload)  # token ids: as they are
        key = (payload.get("model"), payload.get("encoding_format"), payload.get("dimensions"))
        batch = self._open.get(key)
        if batch is not None and len(batch.inputs) + len(texts) > self._max_inputs:
            # Full: waiting for the backend would not make it bigger, so it goes now.
            batch.due = True
            self._leave(key, force=True)
            batch = None
        if batch is None:
            batch = self._open[key] = _Batch(payload)
            batch.timer = asyncio.get_running_loop().call_later(self._window_s, self._window_over, key)
        future: asyncio.Future[Json] = asyncio.get_running_loop().create_future()
        batch.members.append((len(batch.inputs), len(texts), future))
        batch.inputs.extend(texts)
        if len(batch.inputs) >= self._max_inputs:
            batch.due = True
            self._leave(key)
        return await future

    def _window_over(self, key: Key) -> None:
        batch = self._open.get(key)
        if batch is not None:
            batch.due = True
            self._leave(key)

    def _leave(self, key: Key, force: bool = False) -> None:
        """Send the open batch of `key` if it is due and the backend is free (or if forced)."""
        batch = self._open.get(key)
        if batch is None or not batch.due or (key in self._busy and not force):
            return
        del self._open[key]
        if batch.timer is not None:
            batch.timer.cancel()
        self._busy.add(key)
        task = asyncio.get_running_loop().create_task(self._call(key, batch))
        self._flushing.add(task)
        task.add_done_callback(self._flushing.discard)

    async def _call(self, key: Key, batch: _Batch) -> None:
        self.backend_calls += 1
        try:
            body = await self._backend().complete(
                Endpoint.EMBEDDINGS, {**batch.payload, "input": batch.inputs}
            )
        except Exception as exc:  # noqa: BLE001 - every member gets the backend's error
            for _, _, future in batch.members:
                if not future.done():
                    future.set_exception(exc)
            return
        finally:
            self._busy.discard(key)
            self._leave(key)  # the batch that grew meanwhile goes now, if its window has passed
        data = sorted(body.get("data") or [], key=lambda item: item.get("index", 0))
        usage = body.get("usage") or {}
        total = len(batch.inputs) or 1
        for offset, count, future in batch.members:
            if future.done():
                continue
            part = [{**item, "index": i} for i, item in enumerate(data[offset : offset + count])]
            # Each member's share of the usage (rounded; the shares may differ from the total by one).
            share = {k: round(v * count / total) for k, v in usage.items() if isinstance(v, int)}
            future.set_result({**body, "data": part, "usage": share})
