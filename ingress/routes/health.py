"""Liveness and readiness probes, and the Prometheus scrape endpoint."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import JSONResponse, Response

from ingress.deps import ServicesDep

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
async def metrics() -> Response:
    """Prometheus text exposition. Labels carry model, consumer and key-free names only."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
