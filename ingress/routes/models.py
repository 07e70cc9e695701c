"""GET /v1/models and /v1/models/{id}."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from ingress.auth import Caller
from ingress.deps import ServicesDep
from ingress.errors import APIError
from schemas.openai import Model, ModelList

router = APIRouter(prefix="/v1")


@router.get("/models")
async def list_models(identity: Caller, services: ServicesDep) -> Response:
    """Only the models the caller's roles let it use."""
    live = services.live.current
    visible = set(live.authorizer.visible(identity.roles, (m.name for m in live.catalog.models)))
    listing = ModelList(
        data=[Model(id=m.name, owned_by=m.owned_by) for m in live.catalog.models if m.name in visible]
    )
    return Response(listing.model_dump_json(), media_type="application/json")


@router.get("/models/{model_id:path}")
async def get_model(model_id: str, identity: Caller, services: ServicesDep) -> Response:
    live = services.live.current
    for model in live.catalog.models:
        if model.name == model_id and live.authorizer.visible(identity.roles, [model_id]):
            return Response(
                Model(id=model.name, owned_by=model.owned_by).model_dump_json(), media_type="application/json"
            )
    raise APIError(404, f"the model {model_id!r} does not exist", "model_not_found", "model")
