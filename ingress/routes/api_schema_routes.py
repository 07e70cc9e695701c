"""`/openapi.json`, for any valid API key by default (`MODELBUS_API_SCHEMA=key|public|off`), and a
schema that says what the routes really take and answer.

The routes read their bodies themselves (they validate with the endpoint table's models, stream, and
refuse oversized bodies before parsing), so FastAPI sees no body parameter; `document` adds each
POST route's request model, the error body every route may answer with (OpenAI's shape, Anthropic's
on `/v1/messages`) and the event stream of streaming endpoints. A fuzzer (tests/e2e/test_fuzz.py)
generates requests from this document, so it has to be true.

The schema lists every route, the admin API's included, so it is no more public than the API itself.
FastAPI's `/docs` and `/redoc` pages are not served at all: they load their scripts from a CDN and run
inline script, which the gateway's pages do not allow (and an on-prem gateway should not fetch).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from starlette.responses import JSONResponse

from ingress.auth import authenticate
from ingress.deps import ServicesDep
from ingress.error_responses import APIError
from schemas.batches import BatchCreate
from schemas.endpoints import BY_PATH, ENDPOINTS
from schemas.keys import ApiKeyCreate
from schemas.openai import ErrorResponse
from schemas.tasks import TaskCreate

router = APIRouter()

_BODIES: dict[tuple[str, str], type[BaseModel]] = {
    **{("post", spec.path): spec.schema for spec in ENDPOINTS.values()},
    ("post", "/v1/tasks"): TaskCreate,
    ("post", "/v1/batches"): BatchCreate,
    ("post", "/admin/keys"): ApiKeyCreate,
}
_ANTHROPIC_ERROR = {
    "type": "object",
    "required": ["type", "error"],
    "properties": {
        "type": {"const": "error"},
        "error": {
            "type": "object",
            "required": ["type", "message"],
            "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
        },
    },
}

# Before OpenAPI 3.2 the schema of an event stream describes each event (its fields, `data` a string).
_SERVER_SENT_EVENT = {
    "type": "object",
    "properties": {"event": {"type": "string"}, "data": {"type": "string"}, "id": {"type": "string"}},
}


@router.get("/openapi.json", include_in_schema=False)
async def openapi_schema(request: Request, services: ServicesDep) -> JSONResponse:
    access = services.settings.api_schema
    if access == "off":
        raise APIError(404, "the API schema is not served here", "not_found")
    if access == "key":
        await authenticate(request, services)
    return JSONResponse(request.app.openapi())


def document(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document of `app`, built once."""
    if app.openapi_schema is None:
        doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
        components: dict[str, Any] = doc.setdefault("components", {}).setdefault("schemas", {})
        for (method, path), model in _BODIES.items():
            operation = doc["paths"].get(path, {}).get(method)
            if operation is not None:
                content = {"application/json": {"schema": _component(model, components)}}
                operation["requestBody"] = {"required": True, "content": content}
        openai_error = _component(ErrorResponse, components)
        app.openapi_schema = doc
        for path, operations in doc["paths"].items():
            spec = BY_PATH.get(path)
            error = _ANTHROPIC_ERROR if spec is not None and spec.errors == "anthropic" else openai_error
            for operation in operations.values():
                responses = operation["responses"]
                # Validation errors are 400s in OpenAI's shape here (ingress/error_responses.py), never 422.
                responses.pop("422", None)
                responses["default"] = {
                    "description": "an error, in the shape the endpoint's clients parse",
                    "content": {"application/json": {"schema": error}},
                }
                if spec is not None and spec.streams:
                    ok = responses.setdefault("200", {"description": "OK"}).setdefault("content", {})
                    ok["text/event-stream"] = {"schema": _SERVER_SENT_EVENT}
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
    return app.openapi_schema


def _component(model: type[BaseModel], components: dict[str, Any]) -> dict[str, str]:
    """A `$ref` to `model`, its schema (and the schemas it refers to) added to `components`."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(schema.pop("$defs", {}))
    components[model.__name__] = schema
    return {"$ref": f"#/components/schemas/{model.__name__}"}
