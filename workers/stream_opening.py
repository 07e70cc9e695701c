"""Opening a backend stream: retried like a plain call until its first chunk, never after.

A backend that fails before it has sent anything (connection refused, a 503 while it loads) can be
asked again without the client seeing a thing; once a chunk is out, a retry would repeat or lose
tokens, so later failures end the stream instead. The first chunk is awaited here and put back in
front of the rest.

The runner reads a stream in batches: `(chunks, last)`, the chunks that arrived together (one read
of the connection) and whether the stream ended with them. A backend with `stream_batches` (the
HTTP adapter) produces them itself; any other backend's `stream()` is batched by a pump task that
runs ahead of the reader, so chunks produced without a pause still leave in one frame.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from schemas.envelope import Endpoint
from workers.backends.backend_errors import BackendError
from workers.backends.base import Backend, Batch, Json

# Waits before the next attempt, or raises the error when it is not to be retried.
Backoff = Callable[[int, BackendError], Awaitable[None]]
T = TypeVar("T")


async def open_stream(
    backend: Backend, endpoint: Endpoint, payload: Json, backoff: Backoff
) -> AsyncIterator[Batch]:
    """The backend's stream in batches, its first batch already received."""
    batches = getattr(backend, "stream_batches", None)
    if batches is not None:
        return await _opened(lambda: batches(endpoint, payload), backoff)
    return _batched(await _opened(lambda: backend.stream(endpoint, payload), backoff))


async def _opened(start: Callable[[], AsyncIterator[T]], backoff: Backoff) -> AsyncIterator[T]:
    attempt = 0
    while True:
        stream = start()
        try:
            first = await anext(stream)
        except StopAsyncIteration:
            return _empty()
        except BackendError as exc:
            await stream.aclose()  # type: ignore[attr-defined]
            await backoff(attempt, exc)
            attempt += 1
            continue
        except BaseException:
            await stream.aclose()  # type: ignore[attr-defined]
            raise
        return _prepend(first, stream)


async def _empty() -> AsyncIterator[T]:
    return
    yield  # pragma: no cover - makes this an async generator


async def _prepend(first: T, rest: AsyncIterator[T]) -> AsyncIterator[T]:
    try:
        yield first
        async for item in rest:
            yield item
    finally:
        await rest.aclose()  # type: ignore[attr-defined]


async def _batched(chunks: AsyncIterator[Json]) -> AsyncIterator[Batch]:
    """Chunk by chunk into batches: what the pump read while the reader was busy is one batch."""
    buffer: list[Json] = []
    ready = asyncio.Event()
    exhausted = False

    async def pump() -> None:
        nonlocal exhausted
        try:
            async for chunk in chunks:
                buffer.append(chunk)
                ready.set()
        finally:
            exhausted = True
            ready.set()

    task = asyncio.ensure_future(pump())
    try:
        while True:
            await ready.wait()
            ready.clear()
            failed = task.done() and not task.cancelled() and task.exception() is not None
            if buffer:  # what came before a failure still goes out
                batch = buffer.copy()
                buffer.clear()
                yield batch, exhausted and not failed
            if failed:
                task.result()  # raises the backend's error
            if exhausted:
                return
    finally:
        if not task.done():
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await chunks.aclose()  # type: ignore[attr-defined]
