"""GET and DELETE /v1/responses/{id}: the caller's own stored Responses API answers.

Creating one (`POST /v1/responses`) is an inference endpoint like the others (ingress/routes/
inference.py); the worker stores the answer (dispatcher/caching/stored_responses.py). Reading one needs the
role that created it: a consumer whose roles no longer grant the model cannot read its answers.
"""

from __future__ import annotations

import re

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from dispatcher.admission.identity import Identity
from ingress.audit_events import note_target
from ingress.auth import Caller
from ingress.deps import Services, ServicesDep
from ingress.error_responses import APIError
from schemas.dialects import RESPONSE_ID_PATTERN, StoredResponse

router = APIRouter(prefix="/v1")
_ID = re.compile(RESPONSE_ID_PATTERN)


async def _owned(response_id: str, identity: Identity, services: Services) -> StoredResponse:
    record = await services.responses.get(response_id, identity.consumer) if _ID.match(response_id) else None
    model = str(record.response.get("model", "")) if record is not None else ""
    if record is None or not services.live.authorizer.permits(identity.roles, model, "chat"):
        # Someone else's response, or one the caller may no longer see, is indistinguishable from none.
        raise APIError(404, f"no stored response {response_id!r}", "response_not_found", "response_id")
    return record


@router.get("/responses/{response_id}")
async def get_response(response_id: str, identity: Caller, services: ServicesDep) -> Response:
    record = await _owned(response_id, identity, services)
    return Response(orjson.dumps(record.response), media_type="application/json")


@router.get("/responses/{response_id}/input_items")
async def list_input_items(response_id: str, identity: Caller, services: ServicesDep) -> Response:
    """The items the model read, newest first (OpenAI's default order), earlier turns included."""
    record = await _owned(response_id, identity, services)
    items = [
        {"id": item.get("id") or f"item_{record.id[5:]}_{i}", **item} for i, item in enumerate(record.context)
    ][::-1]
    page = {
        "object": "list",
        "data": items,
        "first_id": items[0]["id"] if items else None,
        "last_id": items[-1]["id"] if items else None,
        "has_more": False,
    }
    return Response(orjson.dumps(page), media_type="application/json")


@router.delete("/responses/{response_id}")
async def delete_response(
    request: Request, response_id: str, identity: Caller, services: ServicesDep
) -> Response:
    note_target(request, response_id=response_id)
    await _owned(response_id, identity, services)
    await services.responses.delete(response_id, identity.consumer)
    body = {"id": response_id, "object": "response", "deleted": True}
    return Response(orjson.dumps(body), media_type="application/json")
