"""The OpenAI Batch API (/v1/batches)."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from ingress.audit_events import note_target
from ingress.auth import BatchCaller, Caller
from ingress.batch_intake import BatchIntake
from ingress.body import parse, read_body
from ingress.deps import Services, ServicesDep
from ingress.error_responses import APIError
from ingress.routes.files_routes import batch_store
from schemas.batches import BatchCreate

router = APIRouter(prefix="/v1")


def _intake(services: Services) -> BatchIntake:
    batch_store(services)  # 503 without a database
    assert services.batch_intake is not None
    return services.batch_intake


@router.post("/batches")
async def create_batch(request: Request, identity: BatchCaller, services: ServicesDep) -> Response:
    create = parse(BatchCreate, await read_body(request, 1 << 20))
    note_target(request, input_file_id=create.input_file_id, endpoint=create.endpoint)
    batch = await _intake(services).create(request, identity, create)
    note_target(request, batch_id=batch.id, lines=batch.request_counts.total)
    return Response(batch.model_dump_json(), media_type="application/json")


@router.get("/batches")
async def list_batches(identity: Caller, services: ServicesDep) -> Response:
    found = await batch_store(services).batches(identity.consumer)
    body = {"object": "list", "data": [b.model_dump(mode="json") for b in found], "has_more": False}
    return Response(orjson.dumps(body), media_type="application/json")


@router.get("/batches/{batch_id}")
async def get_batch(batch_id: str, identity: Caller, services: ServicesDep) -> Response:
    batch = await batch_store(services).batch(batch_id, identity.consumer)
    if batch is None:
        raise APIError(404, f"no batch {batch_id!r}", "batch_not_found")
    return Response(batch.model_dump_json(), media_type="application/json")


@router.post("/batches/{batch_id}/cancel")
async def cancel_batch(batch_id: str, request: Request, identity: Caller, services: ServicesDep) -> Response:
    note_target(request, batch_id=batch_id)
    batch = await _intake(services).cancel(identity, batch_id)
    return Response(batch.model_dump_json(), media_type="application/json")
