"""Liveness and readiness probes, and the Prometheus scrape endpoint (docs/observability.md#metrics:
behind `MODELBUS_METRICS_TOKEN` when set, or moved to `MODELBUS_INGRESS_METRICS_PORT`)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import JSONResponse, Response

from dispatcher.telemetry.exposition import authorized
from ingress.deps import ServicesDep
from ingress.error_responses import APIError

router = APIRouter()


@router.get("/healthz")
async def healthz() -> JSONResponse:
    """The process is alive; restarting it would not help anything else."""
    return JSONResponse({"status": "ok"})


@router.get("/readyz")
async def readyz(services: ServicesDep) -> JSONResponse:
    """Ready when JetStream answers (otherwise requests could not be queued) and every background
    watcher runs (a dead key watcher would keep accepting revoked keys)."""
    down = services.supervisor.down
    if down:
        return JSONResponse({"status": "unavailable", "down": down}, status_code=503)
    nc = services.nc
    if not nc.is_connected:
        return JSONResponse({"status": "unavailable", "nats": "disconnected"}, status_code=503)
    try:
        async with asyncio.timeout(2.0):
            await nc.jetstream().account_info()
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        return JSONResponse({"status": "unavailable", "jetstream": type(exc).__name__}, status_code=503)
    return JSONResponse({"status": "ready"})


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request, services: ServicesDep) -> Response:
    """Prometheus text exposition; label values are configured names or `unknown` (telemetry/labels.py)."""
    settings = services.settings
    if settings.ingress_metrics_port is not None:
        raise APIError(404, "metrics are served on their own port", "not_found")
    if not authorized(request.headers.get("authorization"), settings.metrics_token):
        message = "metrics need 'Authorization: Bearer <metrics token>'"
        raise APIError(401, message, "invalid_metrics_token", headers={"WWW-Authenticate": "Bearer"})
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
