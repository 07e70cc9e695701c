"""The OpenAI Files API (/v1/files), for batch input and output files."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

from dispatcher.jobs.batch_store import BatchStore
from ingress.audit_events import note_target
from ingress.auth import BatchCaller, Caller
from ingress.batch_files import NO_RETRY, JsonlUpload, LineRules, read_multipart_upload
from ingress.deps import Services, ServicesDep
from ingress.error_responses import APIError

router = APIRouter(prefix="/v1")
# The body is streamed by hand (ingress/batch_files.py), so the form is described here.
_UPLOAD_FORM: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "purpose"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "purpose": {"type": "string", "enum": ["batch"]},
                    },
                }
            }
        },
    }
}


def batch_store(services: Services) -> BatchStore:
    store = services.batches
    if store is None:
        raise APIError(503, "files and batches need a database: set MODELBUS_DATABASE_URL", "no_database")
    return store


def _json(body: object, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


@router.post("/files", openapi_extra=_UPLOAD_FORM)
async def upload_file(request: Request, identity: BatchCaller, services: ServicesDep) -> Response:
    """A batch input file, checked line by line as it arrives (ingress/batch_files.py)."""
    store = batch_store(services)
    settings = services.settings
    quota_left = settings.storage_quota_bytes - await store.stored_bytes(identity.consumer)
    rules = LineRules(identity, services.live.current, None, settings.max_body_bytes, services.offload)
    async with store.new_file(identity.consumer) as writer:
        upload = JsonlUpload(rules, settings.max_upload_bytes, quota_left, writer)
        filename, purpose = await read_multipart_upload(request, upload)
        if purpose != "batch":
            raise APIError(400, "purpose must be 'batch'", "invalid_purpose", "purpose")
        await upload.finish()
        # Uploads of one consumer racing each other could each fit what was left: count again.
        if upload.size > settings.storage_quota_bytes - await store.stored_bytes(identity.consumer):
            raise APIError(
                429,
                "this upload would exceed your storage quota; delete files first",
                "storage_quota_exceeded",
                headers=NO_RETRY,
            )
        stored = await writer.commit(filename, purpose)
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
    chunks = await batch_store(services).file_chunks(identity.consumer, file_id)
    if chunks is None:
        raise APIError(404, f"no file {file_id!r}", "file_not_found")
    return StreamingResponse(chunks, media_type="application/jsonl")


@router.delete("/files/{file_id}")
async def delete_file(file_id: str, request: Request, identity: Caller, services: ServicesDep) -> Response:
    note_target(request, file_id=file_id)
    if not await batch_store(services).delete_file(identity.consumer, file_id):
        raise APIError(404, f"no file {file_id!r}", "file_not_found")
    return _json({"id": file_id, "object": "file", "deleted": True})
