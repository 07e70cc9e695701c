"""The admin API for run-time API keys: create (the key is in the answer, once), list, revoke."""

from __future__ import annotations

from datetime import timedelta

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from dispatcher.errors import KeyExists, KeyNotFound
from dispatcher.policy.api_keys import config_key_ids
from ingress.audit_events import note_target
from ingress.auth import Admin
from ingress.body import parse, read_body
from ingress.deps import ServicesDep
from ingress.error_responses import APIError
from schemas.keys import ApiKeyCreate, ApiKeyView, CreatedApiKey

router = APIRouter(prefix="/admin/keys")


@router.post("")
async def create_key(request: Request, _: Admin, services: ServicesDep) -> Response:
    create = parse(ApiKeyCreate, await read_body(request, 64 * 1024))
    note_target(request, consumer=create.consumer, key_id=create.id)
    config = services.live.config
    if config.consumer(create.consumer) is None:
        raise APIError(
            400, f"no consumer {create.consumer!r} in the configuration", "unknown_consumer", "consumer"
        )
    expires = timedelta(seconds=create.expires_in_s) if create.expires_in_s is not None else None
    try:
        record, key = await services.key_registry.create(
            create.consumer, create.id, expires, create.description, config=config
        )
    except KeyExists:
        raise APIError(
            409, f"a key with id {create.id!r} exists (ids are never reused)", "key_exists", "id"
        ) from None
    note_target(request, key_id=record.id)
    view = CreatedApiKey(**ApiKeyView.of(record).model_dump(), key=key)
    return Response(view.model_dump_json(), status_code=201, media_type="application/json")


@router.get("")
async def list_keys(_: Admin, services: ServicesDep, consumer: str | None = None) -> Response:
    records = await services.key_registry.list()
    views = [ApiKeyView.of(r).model_dump(mode="json") for r in records if consumer in (None, r.consumer)]
    return Response(orjson.dumps({"object": "list", "data": views}), media_type="application/json")


@router.delete("/{key_id}")
async def revoke_key(key_id: str, request: Request, _: Admin, services: ServicesDep) -> Response:
    note_target(request, key_id=key_id)
    if key_id in config_key_ids(services.live.config):
        raise APIError(
            409,
            f"the key {key_id!r} is defined in the configuration: remove it there and apply it",
            "key_in_config",
        )
    try:
        record = await services.key_registry.revoke(key_id)
    except KeyNotFound:
        raise APIError(404, f"no key with id {key_id!r}", "key_not_found") from None
    note_target(request, consumer=record.consumer)
    return Response(ApiKeyView.of(record).model_dump_json(), media_type="application/json")
