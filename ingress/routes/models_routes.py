"""GET /v1/models and /v1/models/{id}."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from ingress.auth import Caller
from ingress.deps import ServicesDep
from ingress.error_responses import APIError
from schemas.openai import Model, ModelList

router = APIRouter(prefix="/v1")


@router.get("/models")
async def list_models(identity: Caller, services: ServicesDep) -> Response:
    """Only the models (and pools) the caller's roles let it use."""
    listed = services.live.current.catalog.listed
    visible = set(services.live.current.authorizer.visible(identity.roles, listed))
    listing = ModelList(
        data=[Model(id=name, owned_by=owner) for name, owner in listed.items() if name in visible]
    )
    return Response(listing.model_dump_json(), media_type="application/json")


@router.get("/models/{model_id:path}")
async def get_model(model_id: str, identity: Caller, services: ServicesDep) -> Response:
    live = services.live.current
    owner = live.catalog.listed.get(model_id)
    if owner is not None and live.authorizer.visible(identity.roles, [model_id]):
        return Response(Model(id=model_id, owned_by=owner).model_dump_json(), media_type="application/json")
    raise APIError(404, f"the model {model_id!r} does not exist", "model_not_found", "model")
