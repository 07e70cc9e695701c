"""Request coalescing for embeddings: compatible requests that arrive within a short window become
one backend call, whose results are split back. Embedding models run several times faster on a
batch than one text at a time, so this turns many small requests into the batches GPUs want.

Requests are compatible when they ask for the same model, encoding format and dimensions; token-id
inputs are passed through uncoalesced. A batch leaves when the window ends or it holds
`max_inputs` inputs, whichever is first, so the added latency is at most the window.
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


class EmbeddingCoalescer:
    def __init__(self, backend: Callable[[], Backend], window_s: float, max_inputs: int) -> None:
        self._backend = backend
        self._window_s = window_s
        self._max_inputs = max_inputs
        self._open: dict[Key, _Batch] = {}
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
            self._flush(key)
            batch = None
        if batch is None:
            batch = self._open[key] = _Batch(payload)
            batch.timer = asyncio.get_running_loop().call_later(self._window_s, self._flush, key)
        future: asyncio.Future[Json] = asyncio.get_running_loop().create_future()
        batch.members.append((len(batch.inputs), len(texts), future))
        batch.inputs.extend(texts)
        if len(batch.inputs) >= self._max_inputs:
            self._flush(key)
        return await future

    def _flush(self, key: Key) -> None:
        batch = self._open.pop(key, None)
        if batch is None:
            return
        if batch.timer is not None:
            batch.timer.cancel()
        task = asyncio.get_running_loop().create_task(self._call(batch))
        self._flushing.add(task)
        task.add_done_callback(self._flushing.discard)

    async def _call(self, batch: _Batch) -> None:
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
        data = sorted(body.get("data") or [], key=lambda item: item.get("index", 0))
        usage = body.get("usage") or {}
        total = len(batch.inputs) or 1
        for offset, count, future in batch.members:
            if future.done():
                continue
            part = [{**item, "index": i} for i, item in enumerate(data[offset : offset + count])]
            share = {k: round(v * count / total) for k, v in usage.items() if isinstance(v, int)}
            future.set_result({**body, "data": part, "usage": share})
