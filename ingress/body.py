"""Reading a request body: size-capped before anything is parsed. Validation is admission's
(`dispatcher.admission.validation.parse`), the same for every entry point."""

from __future__ import annotations

from fastapi import Request

from dispatcher.admission.validation import parse
from ingress.error_responses import APIError

__all__ = ["parse", "read_body"]


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
