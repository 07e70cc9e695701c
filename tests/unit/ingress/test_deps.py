"""The ingress's dependencies and endpoints run on the event loop: FastAPI hands a plain `def` to
a worker thread, a thread and a loop wake-up per request (13 % of the ingress's busy time at chat
c=16 when the services dependency was one; docs/benchmarks.md, HTTP edge)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable, Iterator
from typing import Any

from fastapi import APIRouter
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

import ingress.routes


def _calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    if dependant.call is not None:
        yield dependant.call
    for sub in dependant.dependencies:
        yield from _calls(sub)


def test_no_route_hands_work_to_a_thread() -> None:
    routers = [
        importlib.import_module(f"ingress.routes.{module.name}").router
        for module in pkgutil.iter_modules(ingress.routes.__path__)
    ]
    assert all(isinstance(router, APIRouter) for router in routers)
    routes = [route for router in routers for route in router.routes if isinstance(route, APIRoute)]
    assert any(route.path == "/v1/chat/completions" for route in routes)
    sync = {
        f"{route.path}: {call.__qualname__}"
        for route in routes
        for call in _calls(route.dependant)
        if not inspect.iscoroutinefunction(call)
    }
    assert not sync, f"run in a worker thread by FastAPI: {sorted(sync)}"
