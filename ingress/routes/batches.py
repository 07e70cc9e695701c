"""The OpenAI Batch API (/v1/batches)."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from ingress.auth import Caller
from ingress.batches import BatchIntake
from ingress.body import parse, read_body
from ingress.errors import APIError
from ingress.routes.files import batch_store
from schemas.batches import BatchCreate

router = APIRouter(prefix="/v1")


def _intake(request: Request) -> BatchIntake:
    batch_store(request)  # 503 without a database
    intake: BatchIntake = request.app.state.batch_intake
    return intake


@router.post("/batches")
async def create_batch(request: Request, identity: Caller) -> Response:
    create = parse(BatchCreate, await read_body(request, 1 << 20))
    batch = await _intake(request).create(request, identity, create)
    return Response(batch.model_dump_json(), media_type="application/json")


@router.get("/batches")
async def list_batches(request: Request, identity: Caller) -> Response:
    found = await batch_store(request).batches(identity.consumer)
    body = {"object": "list", "data": [b.model_dump(mode="json") for b in found], "has_more": False}
    return Response(orjson.dumps(body), media_type="application/json")


@router.get("/batches/{batch_id}")
async def get_batch(batch_id: str, request: Request, identity: Caller) -> Response:
    batch = await batch_store(request).batch(batch_id, identity.consumer)
    if batch is None:
        raise APIError(404, f"no batch {batch_id!r}", "batch_not_found")
    return Response(batch.model_dump_json(), media_type="application/json")


@router.post("/batches/{batch_id}/cancel")
async def cancel_batch(batch_id: str, request: Request, identity: Caller) -> Response:
    batch = await _intake(request).cancel(identity, batch_id)
    return Response(batch.model_dump_json(), media_type="application/json")
