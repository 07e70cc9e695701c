"""The admin API for run-time API keys: create (the key is in the answer, once), list, revoke."""

from __future__ import annotations

from datetime import timedelta

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from dispatcher.api_keys import KeyExists, KeyNotFound, KeyRegistry
from ingress.auth import Admin
from ingress.body import parse, read_body
from ingress.errors import APIError
from ingress.live_config import live_config
from schemas.keys import ApiKeyCreate, ApiKeyView, CreatedApiKey

router = APIRouter(prefix="/admin/keys")


def _registry(request: Request) -> KeyRegistry:
    registry: KeyRegistry = request.app.state.key_registry
    return registry


@router.post("")
async def create_key(request: Request, _: Admin) -> Response:
    create = parse(ApiKeyCreate, await read_body(request, 64 * 1024))
    if live_config(request).config.consumer(create.consumer) is None:
        raise APIError(
            400, f"no consumer {create.consumer!r} in the configuration", "unknown_consumer", "consumer"
        )
    expires = timedelta(seconds=create.expires_in_s) if create.expires_in_s is not None else None
    try:
        record, key = await _registry(request).create(create.consumer, create.id, expires, create.description)
    except KeyExists:
        raise APIError(409, f"a key with id {create.id!r} exists", "key_exists", "id") from None
    view = CreatedApiKey(**ApiKeyView.of(record).model_dump(), key=key)
    return Response(view.model_dump_json(), status_code=201, media_type="application/json")


@router.get("")
async def list_keys(request: Request, _: Admin, consumer: str | None = None) -> Response:
    records = await _registry(request).list()
    views = [ApiKeyView.of(r).model_dump(mode="json") for r in records if consumer in (None, r.consumer)]
    return Response(orjson.dumps({"object": "list", "data": views}), media_type="application/json")


@router.delete("/{key_id}")
async def revoke_key(key_id: str, request: Request, _: Admin) -> Response:
    try:
        record = await _registry(request).revoke(key_id)
    except KeyNotFound:
        raise APIError(404, f"no key with id {key_id!r}", "key_not_found") from None
    return Response(ApiKeyView.of(record).model_dump_json(), media_type="application/json")
