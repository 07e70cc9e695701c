"""Reading and validating a request body: size-capped, strict JSON, errors naming the field."""

from __future__ import annotations

from typing import TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from ingress.errors import APIError

M = TypeVar("M", bound=BaseModel)


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise APIError(400, "invalid Content-Length header", "invalid_request")
        if int(declared) > limit:
            raise APIError(413, f"request body exceeds {limit} bytes", "request_too_large")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(413, f"request body exceeds {limit} bytes", "request_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def parse(model: type[M], body: bytes) -> M:
    if not body.strip():
        raise APIError(400, "the request body is empty; send a JSON object", "invalid_json")
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        if error["type"] in ("json_invalid", "json_type"):
            raise APIError(400, "the request body is not valid JSON", "invalid_json") from None
        if error["type"] == "model_type":
            raise APIError(400, "the request body must be a JSON object", "invalid_json") from None
        param = ".".join(str(part) for part in error["loc"]) or None
        raise APIError(
            400, f"{param}: {error['msg']}" if param else error["msg"], "invalid_value", param
        ) from None
