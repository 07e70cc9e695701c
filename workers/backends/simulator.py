"""The simulator as an in-process backend: the dev stack and tests run without any GPU server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson

from schemas.config import SimulatorBackend
from schemas.envelope import Endpoint
from simulator import openai_shapes
from simulator.engine import SimulatedBadRequest, SimulatedFailure, SimulatedModel
from workers.backends.backend_errors import BackendError, backend_error
from workers.backends.base import Json


class SimulatorAdapter:
    # Responses and Messages requests reach the simulator translated to chat completions.
    native: frozenset[Endpoint] = frozenset()

    def __init__(self, config: SimulatorBackend, model: str) -> None:
        self.model = SimulatedModel(config)
        self._name = model

    @property
    def description(self) -> str:
        return "simulator"

    async def complete(self, endpoint: Endpoint, payload: Json) -> Json:
        try:
            return await openai_shapes.complete(self.model, endpoint, payload, self._name)
        except SimulatedFailure as exc:
            raise BackendError(str(exc), status=503, retryable=True) from exc
        except SimulatedBadRequest as exc:
            raise _bad_request(exc) from exc

    async def stream(self, endpoint: Endpoint, payload: Json) -> AsyncIterator[Json]:
        chunks = openai_shapes.stream_chunks(self.model, endpoint, payload, self._name)
        try:
            async for chunk in chunks:
                yield chunk
        except SimulatedFailure as exc:
            raise BackendError(str(exc), status=503, retryable=True) from exc
        except SimulatedBadRequest as exc:
            raise _bad_request(exc) from exc
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]

    async def aclose(self) -> None:
        return None


def _bad_request(exc: SimulatedBadRequest) -> BackendError:
    """Read like the same words from an HTTP backend (a context overflow keeps its meaning)."""
    return backend_error(400, orjson.dumps({"error": {"message": str(exc)}}))
