"""`/openapi.json`, for any valid API key by default (`MODELBUS_API_SCHEMA=key|public|off`).

The schema lists every route, the admin API's included, so it is no more public than the API itself.
FastAPI's `/docs` and `/redoc` pages are not served at all: they load their scripts from a CDN and run
inline script, which the gateway's pages do not allow (and an on-prem gateway should not fetch).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse

from ingress.auth import authenticate
from ingress.deps import ServicesDep
from ingress.errors import APIError

router = APIRouter()


@router.get("/openapi.json", include_in_schema=False)
async def openapi_schema(request: Request, services: ServicesDep) -> JSONResponse:
    access = services.settings.api_schema
    if access == "off":
        raise APIError(404, "the API schema is not served here", "not_found")
    if access == "key":
        await authenticate(request, services)
    return JSONResponse(request.app.openapi())
