"""The simulator as an in-process backend: the dev stack and tests run without any GPU server."""

from __future__ import annotations

from collections.abc import AsyncIterator

from schemas.config import SimulatorBackend
from schemas.envelope import Endpoint
from simulator import openai_shapes
from simulator.engine import SimulatedBadRequest, SimulatedFailure, SimulatedModel
from workers.backends.base import BackendError, Json


class SimulatorAdapter:
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
            raise BackendError(str(exc), status=400, retryable=False) from exc

    async def stream(self, endpoint: Endpoint, payload: Json) -> AsyncIterator[Json]:
        chunks = openai_shapes.stream_chunks(self.model, endpoint, payload, self._name)
        try:
            async for chunk in chunks:
                yield chunk
        except SimulatedFailure as exc:
            raise BackendError(str(exc), status=503, retryable=True) from exc
        except SimulatedBadRequest as exc:
            raise BackendError(str(exc), status=400, retryable=False) from exc
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]

    async def aclose(self) -> None:
        return None
