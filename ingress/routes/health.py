"""Liveness and readiness probes, and the Prometheus scrape endpoint."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from nats.aio.client import Client as NATS
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import JSONResponse, Response

router = APIRouter()


@router.get("/healthz")
async def healthz() -> JSONResponse:
    """The process is alive; restarting it would not help anything else."""
    return JSONResponse({"status": "ok"})


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """Ready when JetStream answers: otherwise requests could not be queued."""
    nc: NATS = request.app.state.nc
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
