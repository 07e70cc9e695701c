"""The ops page: live charts of every model's queue, workers, traffic and latency.

`/ops` is a static page (no data, no secret in it); the figures come from `/admin/ops/data`, which
needs the admin role like the rest of the admin API. The page takes the admin key from the URL
fragment (`/ops#key=...`, never sent to the server or written to its logs) or asks for it, and keeps
it in the tab's session storage.
"""

from __future__ import annotations

from importlib.resources import files

import orjson
from fastapi import APIRouter
from starlette.responses import HTMLResponse, Response

from dispatcher.capacity import capacity_view, share_rows
from ingress.auth import Admin
from ingress.deps import ServicesDep

router = APIRouter()
_CSP = "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:"
_PAGE = files("ingress").joinpath("static/ops.html").read_text(encoding="utf-8")


@router.get("/ops", include_in_schema=False)
async def ops_page() -> HTMLResponse:
    return HTMLResponse(_PAGE, headers={"Cache-Control": "no-store", "Content-Security-Policy": _CSP})


@router.get("/admin/ops/data")
async def ops_data(_: Admin, services: ServicesDep) -> Response:
    view = await capacity_view(
        services.nc.jetstream(), services.subjects, services.workers, services.live.config
    )
    traffic = services.traffic
    rows = []
    for row in view:
        figures = traffic.figures(row.model)
        row.shares = share_rows(row.shares, traffic.served_shares(row.model), services.live.config)
        rows.append(
            {
                **row.model_dump(),
                "requests_per_s": round(figures.requests_per_s, 2),
                "p50_ms": None if figures.p50_s is None else round(figures.p50_s * 1000, 1),
                "p95_ms": None if figures.p95_s is None else round(figures.p95_s * 1000, 1),
                "tokens_per_s": round(figures.tokens_per_s, 1),
                "errors": figures.errors,
            }
        )
    return Response(orjson.dumps({"models": rows}), media_type="application/json")
