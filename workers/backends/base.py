"""What a worker needs from a model backend (the one error type adapters raise is in backend_errors.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from schemas.envelope import Endpoint

Json = dict[str, Any]
# Stream chunks that arrived together, and whether the stream ended with them (nothing follows).
Batch = tuple[list[Json], bool]


class Backend(Protocol):
    # Endpoints beyond chat, completions and embeddings that the backend serves itself; the worker
    # translates Responses and Messages requests to chat completions for a backend without them.
    native: frozenset[Endpoint]

    @property
    def description(self) -> str:
        """Says which backend served a request (type and address); never contains credentials."""
        ...

    async def complete(self, endpoint: Endpoint, payload: Json) -> Json:
        """One whole OpenAI response body for a non-streaming request."""
        ...

    def stream(self, endpoint: Endpoint, payload: Json) -> AsyncIterator[Json]:
        """OpenAI stream chunk objects as the backend produces them; closing it aborts the call.

        A backend may also offer `stream_batches(endpoint, payload) -> AsyncIterator[Batch]`, the
        same chunks a read at a time (workers/stream_opening.py uses it when present)."""
        ...

    async def aclose(self) -> None: ...
