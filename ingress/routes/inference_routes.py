"""The inference endpoints, one route per row of the endpoint table (schemas/endpoints.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Request
from starlette.responses import Response

from ingress.auth import Caller
from ingress.deps import ServicesDep
from schemas.endpoints import ENDPOINTS, EndpointSpec

router = APIRouter()


def _route(spec: EndpointSpec) -> Callable[[Request, Caller, ServicesDep], Awaitable[Response]]:
    async def serve(request: Request, identity: Caller, services: ServicesDep) -> Response:
        return await services.relay.serve(request, identity, spec)

    serve.__name__ = spec.task_name.replace(".", "_")
    return serve


for _spec in ENDPOINTS.values():
    router.add_api_route(_spec.path, _route(_spec), methods=["POST"], name=_spec.task_name)
