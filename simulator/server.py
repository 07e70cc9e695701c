"""The simulator behind a real OpenAI-compatible HTTP API, for adapter tests and benchmarks.

`GET /stats` reports what the simulated model saw, including aborted generations, so tests can
check from outside that a cancelled request really stopped the backend.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from schemas.config import SimulatorBackend
from schemas.envelope import Endpoint
from simulator import openai_shapes
from simulator.engine import SimulatedBadRequest, SimulatedFailure, SimulatedModel

_ENDPOINTS = {
    "/v1/chat/completions": Endpoint.CHAT,
    "/v1/completions": Endpoint.COMPLETIONS,
    "/v1/embeddings": Endpoint.EMBEDDINGS,
    "/v1/rerank": Endpoint.RERANK,
    "/v1/score": Endpoint.SCORE,
    "/tokenize": Endpoint.TOKENIZE,
    "/detokenize": Endpoint.DETOKENIZE,
}
_STREAMS = (Endpoint.CHAT, Endpoint.COMPLETIONS)


def _json(body: object, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _error(status: int, message: str) -> Response:
    return _json({"error": {"message": message, "type": "server_error", "code": None}}, status)


def create_app(config: SimulatorBackend, model_name: str = "simulated") -> Starlette:
    model = SimulatedModel(config)

    async def infer(request: Request) -> Response:
        endpoint = _ENDPOINTS[request.url.path]
        try:
            payload = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return _error(400, "invalid JSON")
        name = str(payload.get("model") or model_name)
        try:
            if payload.get("stream") and endpoint in _STREAMS:
                chunks = openai_shapes.stream_chunks(model, endpoint, payload, name)
                first = await anext(chunks)  # fail before the 200 if the simulated failure hits
                return StreamingResponse(_sse(first, chunks), media_type="text/event-stream")
            return _json(await openai_shapes.complete(model, endpoint, payload, name))
        except SimulatedFailure as exc:
            return _error(503, str(exc))
        except SimulatedBadRequest as exc:
            return _error(400, str(exc))

    async def stats(_: Request) -> Response:
        return _json(model.stats.as_dict())

    async def models(_: Request) -> Response:
        return _json(
            {"object": "list", "data": [{"id": model_name, "object": "model", "owned_by": "simulator"}]}
        )

    async def health(_: Request) -> Response:
        return _json({"status": "ok"})

    routes = [Route(path, infer, methods=["POST"]) for path in _ENDPOINTS]
    routes += [Route("/stats", stats), Route("/v1/models", models), Route("/health", health)]
    return Starlette(routes=routes)


async def _sse(first: dict[str, object], chunks: AsyncIterator[dict[str, object]]) -> AsyncIterator[bytes]:
    try:
        yield b"data: " + orjson.dumps(first) + b"\n\n"
        async for chunk in chunks:
            yield b"data: " + orjson.dumps(chunk) + b"\n\n"
        yield b"data: [DONE]\n\n"
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]
