"""The inference endpoints' HTTP edge: `POST` on a path of the endpoint table (schemas/endpoints.py)
is served by a plain ASGI handler in front of the FastAPI app; everything else goes to the app.

The handler runs what the FastAPI route runs, in the same order: the audit middleware around the
request (`AuditMiddleware`), authentication (`authenticate`), `Relay.serve` (body, admission,
relay), and on any exception the one error mapping (`answer_error`). What it leaves out is FastAPI's
own machinery on the hottest path: routing through every router, dependency resolution, and five
middleware layers, which cost 17-27 % of the ingress's CPU per chat request at c=16 (bench/http_edge.py;
docs/benchmarks.md, HTTP edge). The FastAPI routes stay registered: they answer every other method
(405 in OpenAI's shape) and name the endpoints in the API schema.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from ingress.audit_events import AuditMiddleware
from ingress.auth import authenticate
from ingress.deps import Services
from ingress.error_responses import answer_error
from schemas.endpoints import BY_PATH


class InferenceEdge:
    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self._audited = AuditMiddleware(self._serve)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in BY_PATH:
            scope["app"] = self.app  # where `Request.app` and the audit middleware find the services
            await self._audited(scope, receive, send)
            return
        await self.app(scope, receive, send)  # lifespan, probes, admin, files, other methods

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            services: Services = self.app.state.services
            identity = await authenticate(request, services)
            response = await services.relay.serve(request, identity, BY_PATH[scope["path"]])
        except Exception as exc:  # noqa: BLE001 — every failure becomes an OpenAI-shaped answer
            response = answer_error(request, exc)
        await response(scope, receive, send)
