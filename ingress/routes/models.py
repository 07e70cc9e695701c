"""GET /v1/models and /v1/models/{id}."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from ingress.auth import Caller
from ingress.errors import APIError
from ingress.live_config import live_config
from schemas.openai import Model

router = APIRouter(prefix="/v1")


@router.get("/models")
async def list_models(request: Request, _: Caller) -> Response:
    return Response(live_config(request).catalog.listing().model_dump_json(), media_type="application/json")


@router.get("/models/{model_id:path}")
async def get_model(model_id: str, request: Request, _: Caller) -> Response:
    for model in live_config(request).catalog.models:
        if model.name == model_id:
            return Response(
                Model(id=model.name, owned_by=model.owned_by).model_dump_json(), media_type="application/json"
            )
    raise APIError(404, f"the model {model_id!r} does not exist", "model_not_found", "model")
