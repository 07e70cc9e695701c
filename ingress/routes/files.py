"""The OpenAI Files API (/v1/files), for batch input and output files."""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import APIRouter, File, Form, Request, UploadFile
from starlette.responses import Response

from dispatcher.batches import BatchStore
from ingress.audit import note_target
from ingress.auth import Caller
from ingress.deps import Services, ServicesDep
from ingress.errors import APIError

router = APIRouter(prefix="/v1")
MAX_FILE_BYTES = 200 * 1024 * 1024


def batch_store(services: Services) -> BatchStore:
    store = services.batches
    if store is None:
        raise APIError(503, "files and batches need a database: set MODELBUS_DATABASE_URL", "no_database")
    return store


def _json(body: object, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


@router.post("/files")
async def upload_file(
    request: Request,
    identity: Caller,
    services: ServicesDep,
    file: Annotated[UploadFile, File()],
    purpose: Annotated[str, Form()],
) -> Response:
    if purpose != "batch":
        raise APIError(400, "purpose must be 'batch'", "invalid_purpose", "purpose")
    content = await file.read(MAX_FILE_BYTES + 1)
    if len(content) > MAX_FILE_BYTES:
        raise APIError(413, f"files are limited to {MAX_FILE_BYTES} bytes", "file_too_large")
    stored = await batch_store(services).add_file(
        identity.consumer, file.filename or "upload.jsonl", purpose, content
    )
    note_target(request, file_id=stored.id, bytes=stored.bytes, purpose=purpose)
    return _json(stored.model_dump())


@router.get("/files")
async def list_files(identity: Caller, services: ServicesDep) -> Response:
    files = await batch_store(services).files(identity.consumer)
    return _json({"object": "list", "data": [f.model_dump() for f in files], "has_more": False})


@router.get("/files/{file_id}")
async def get_file(file_id: str, identity: Caller, services: ServicesDep) -> Response:
    found = await batch_store(services).file(identity.consumer, file_id)
    if found is None:
        raise APIError(404, f"no file {file_id!r}", "file_not_found")
    return _json(found.model_dump())


@router.get("/files/{file_id}/content")
async def get_file_content(file_id: str, identity: Caller, services: ServicesDep) -> Response:
    content = await batch_store(services).file_content(identity.consumer, file_id)
    if content is None:
        raise APIError(404, f"no file {file_id!r}", "file_not_found")
    return Response(content, media_type="application/jsonl")


@router.delete("/files/{file_id}")
async def delete_file(file_id: str, request: Request, identity: Caller, services: ServicesDep) -> Response:
    note_target(request, file_id=file_id)
    if not await batch_store(services).delete_file(identity.consumer, file_id):
        raise APIError(404, f"no file {file_id!r}", "file_not_found")
    return _json({"id": file_id, "object": "file", "deleted": True})
