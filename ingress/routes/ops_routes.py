"""The ops page: live charts of every model's queue, workers, traffic and latency.

`/ops` is a static page (no data, no secret in it); the figures come from `/admin/ops/data`, which
needs the admin role like the rest of the admin API. The page takes the admin key from the URL
fragment (`/ops#key=...`, never sent to the server or written to its logs) or asks for it, and keeps
it in the tab's session storage. Its script and styles are static files beside it (`/ops/ops.js`,
`/ops/ops.css`), so the page's CSP needs no `unsafe-inline`.
"""

from __future__ import annotations

from importlib.resources import files

import orjson
from fastapi import APIRouter
from starlette.responses import HTMLResponse, Response

from dispatcher.scheduling.capacity_view import capacity_view, share_rows
from ingress.auth import Admin
from ingress.deps import ServicesDep

router = APIRouter()
# No inline script or style (the page's script and styles are files of their own), nothing fetched but
# from this origin, and never framed (no clickjacking of an admin's session).
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": _CSP,
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers that predate it
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_STATIC = files("ingress").joinpath("static")
_PAGE = _STATIC.joinpath("ops.html").read_text(encoding="utf-8")
_SCRIPT = _STATIC.joinpath("ops.js").read_text(encoding="utf-8")
_STYLE = _STATIC.joinpath("ops.css").read_text(encoding="utf-8")


@router.get("/ops", include_in_schema=False)
async def ops_page() -> HTMLResponse:
    return HTMLResponse(_PAGE, headers=_HEADERS)


@router.get("/ops/ops.js", include_in_schema=False)
async def ops_script() -> Response:
    return Response(_SCRIPT, media_type="text/javascript; charset=utf-8", headers=_HEADERS)


@router.get("/ops/ops.css", include_in_schema=False)
async def ops_style() -> Response:
    return Response(_STYLE, media_type="text/css; charset=utf-8", headers=_HEADERS)


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
