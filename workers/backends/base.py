"""What a worker needs from a model backend, and the one error type adapters raise."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from schemas.envelope import Endpoint

Json = dict[str, Any]


class BackendError(Exception):
    """The backend could not answer.

    `retryable` is true when the same request may succeed later or elsewhere (connection refused,
    5xx, 429); false when the request itself is at fault (4xx): retrying would fail the same way.
    """

    def __init__(
        self,
        message: str,
        status: int = 502,
        retryable: bool = True,
        code: str | None = None,
        overflow: tuple[int, int] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retryable = retryable
        self.code = code  # the OpenAI error code the client should see, when the backend said one
        self.overflow = overflow  # (prompt tokens, context size) of a prompt the model cannot hold


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
        """OpenAI stream chunk objects as the backend produces them; closing it aborts the call."""
        ...

    async def aclose(self) -> None: ...
