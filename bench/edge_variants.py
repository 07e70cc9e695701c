"""One ingress served another way, for `bench/http_edge.py` (settings from MODELBUS_* as usual).

    python -m bench.edge_variants VARIANT PORT

- edge: what `modelbus ingress` runs: the inference endpoints by the plain ASGI handler of
  ingress/inference_edge.py in front of the FastAPI app, on uvicorn (uvloop, the subclassed
  httptools protocol with the limits of ingress/http_limits.py);
- fastapi: the same without the edge: every route through FastAPI;
- syncdep: `fastapi` with the services dependency a plain `def` again, as before this change
  (FastAPI runs it in a worker thread);
- granian: `edge` on granian (Rust HTTP/1.1, uvloop, one worker, one runtime thread), which cannot
  run the limited httptools protocol (no OpenAI-shaped 431/408/503);
- edge-asyncio: `edge` on the stock asyncio loop, to show what uvloop is worth.
"""

from __future__ import annotations

import os
import sys

import ingress.deps
from dispatcher.telemetry.logs import configure_logging

VARIANTS = ("edge", "fastapi", "syncdep", "granian", "edge-asyncio")
_VARIANT = os.environ.get("EDGE_VARIANT") or (sys.argv[1] if len(sys.argv) > 1 else "")
if _VARIANT == "syncdep":
    # Patched before any route module imports `ServicesDep`.
    from typing import Annotated

    from fastapi import Depends, Request

    def _sync_services(request: Request) -> ingress.deps.Services:
        found: ingress.deps.Services = request.app.state.services
        return found

    ingress.deps.services = _sync_services  # type: ignore[assignment]
    ingress.deps.ServicesDep = Annotated[ingress.deps.Services, Depends(_sync_services)]  # type: ignore[assignment]

from ingress.app import create_app, create_edge
from ingress.http_limits import limited_protocol
from ingress.ingress_settings import IngressSettings


def factory() -> object:
    """The application of the variant named in EDGE_VARIANT (granian imports this by name)."""
    variant = os.environ["EDGE_VARIANT"]
    settings = IngressSettings(port=int(os.environ["EDGE_PORT"]))
    configure_logging("info", settings.log_format)  # as `modelbus ingress` does: one log line a request
    if variant in ("fastapi", "syncdep"):
        return create_app(settings)
    return create_edge(settings)


def main() -> None:
    variant, port = sys.argv[1], int(sys.argv[2])
    if variant not in VARIANTS:
        raise SystemExit(f"unknown variant {variant!r}; one of {', '.join(VARIANTS)}")
    os.environ["EDGE_PORT"], os.environ["EDGE_VARIANT"] = str(port), variant
    if variant == "granian":
        from granian import Granian
        from granian.constants import Interfaces, Loops

        Granian(
            "bench.edge_variants:factory",
            address="127.0.0.1",
            port=port,
            interface=Interfaces.ASGI,
            loop=Loops.uvloop,
            workers=1,
            runtime_threads=1,
            factory=True,
            log_access=False,
        ).serve()
        return
    import uvicorn

    settings = IngressSettings(port=port)
    uvicorn.run(
        factory(),  # type: ignore[arg-type]
        host="127.0.0.1",
        port=port,
        loop="asyncio" if variant == "edge-asyncio" else "uvloop",
        http=limited_protocol(settings.http_limits()),
        log_level="warning",
        access_log=False,
        timeout_keep_alive=settings.keep_alive_timeout_s,
    )


if __name__ == "__main__":
    main()
