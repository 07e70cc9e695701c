"""POST /v1/chat/completions, /v1/completions, /v1/embeddings."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from ingress.auth import Caller
from ingress.relay import Relay
from schemas.envelope import Endpoint

router = APIRouter(prefix="/v1")


def _relay(request: Request) -> Relay:
    relay: Relay = request.app.state.relay
    return relay


@router.post("/chat/completions")
async def chat_completions(request: Request, identity: Caller) -> Response:
    return await _relay(request).serve(request, identity, Endpoint.CHAT)


@router.post("/completions")
async def completions(request: Request, identity: Caller) -> Response:
    return await _relay(request).serve(request, identity, Endpoint.COMPLETIONS)


@router.post("/embeddings")
async def embeddings(request: Request, identity: Caller) -> Response:
    return await _relay(request).serve(request, identity, Endpoint.EMBEDDINGS)
