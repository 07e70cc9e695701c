"""Opening a backend stream: retried like a plain call until its first chunk, never after.

A backend that fails before it has sent anything (connection refused, a 503 while it loads) can be
asked again without the client seeing a thing; once a chunk is out, a retry would repeat or lose
tokens, so later failures end the stream instead. The first chunk is awaited here and put back in
front of the rest.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from schemas.envelope import Endpoint
from workers.backends.backend_errors import BackendError
from workers.backends.base import Backend, Json

# Waits before the next attempt, or raises the error when it is not to be retried.
Backoff = Callable[[int, BackendError], Awaitable[None]]


async def open_stream(
    backend: Backend, endpoint: Endpoint, payload: Json, backoff: Backoff
) -> AsyncIterator[Json]:
    """The backend's stream of chunks, its first chunk already received."""
    attempt = 0
    while True:
        stream = backend.stream(endpoint, payload)
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
