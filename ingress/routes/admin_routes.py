"""The admin API: the audit trail over HTTP (the same queries as `modelbus audit`)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query
from starlette.responses import Response

from dispatcher.audit.checkpoints import NOT_CHECKED, against_checkpoints, public_key
from dispatcher.audit.ledger import AuditFilter, AuditStore
from dispatcher.scheduling.capacity_view import capacity_view
from ingress.auth import Admin
from ingress.deps import Services, ServicesDep
from ingress.error_responses import APIError

router = APIRouter(prefix="/admin")


def _store(services: Services) -> AuditStore:
    engine = services.engine
    if engine is None:
        raise APIError(503, "the audit API needs a database: set MODELBUS_DATABASE_URL", "no_database")
    return AuditStore(engine)


# What a time filter accepts (pydantic's datetime parsing): an ISO 8601 date-time or date, or Unix
# seconds. Said in the schema, so clients (and the fuzzer) know a number is not a mistake.
_TIME: dict[str, Any] = {
    "anyOf": [
        {"type": "string", "format": "date-time"},
        {"type": "string", "format": "date"},
        {"type": "number"},
    ]
}
_Time = Annotated[datetime | None, Query(json_schema_extra=_TIME)]


def _json(body: object) -> Response:
    return Response(orjson.dumps(body), media_type="application/json")


@router.get("/audit")
async def audit_query(
    _: Admin,
    services: ServicesDep,
    model: str | None = None,
    version: str | None = None,
    consumer: str | None = None,
    status: str | None = None,
    since: _Time = None,
    until: _Time = None,
    text: str | None = None,
    limit: int = Query(default=100, ge=1, le=10_000),
) -> Response:
    where = AuditFilter(model, version, consumer, status, since, until, text, limit)
    return _json({"object": "list", "data": await _store(services).query(where)})


@router.get("/audit/compare")
async def audit_compare(
    _: Admin,
    services: ServicesDep,
    model: str,
    old: str,
    new: str,
    limit: int = Query(default=50, ge=1, le=1000),
) -> Response:
    return _json(await _store(services).compare_versions(model, old, new, limit))


@router.get("/audit/verify")
async def audit_verify(_: Admin, services: ServicesDep) -> Response:
    """The chain, and the table against the signed heads in NATS when a verify key is configured."""
    store = _store(services)
    checked, problems = await store.verify()
    public = public_key(services.settings)
    note = NOT_CHECKED if public is None else None
    if public is not None:
        problems += await against_checkpoints(store, services.nc.jetstream(), services.subjects, public)
    body = {"rows": checked, "ok": not problems, "problems": [str(p) for p in problems]}
    return _json(body | ({"note": note} if note else {}))


@router.get("/capacity")
async def capacity(_: Admin, services: ServicesDep) -> Response:
    """Per model and version: live workers, free slots, queue depth and the estimated wait."""
    view = await capacity_view(
        services.nc.jetstream(), services.subjects, services.workers, services.live.config
    )
    return _json({"object": "list", "data": [entry.model_dump() for entry in view]})
