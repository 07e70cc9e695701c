"""Validating a request body against its schema: strict JSON, errors that name the field."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ValidationError

from dispatcher.errors import InvalidRequest

M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], body: bytes) -> M:
    """The validated body, or InvalidRequest (400) saying what is wrong and where."""
    if not body.strip():
        raise InvalidRequest("the request body is empty; send a JSON object", "invalid_json")
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise invalid(exc) from None


def validate(model: type[M], data: object) -> M:
    """Like `parse`, for JSON already decoded (a batch line's body)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid(exc) from None


def invalid(exc: ValidationError) -> InvalidRequest:
    error = exc.errors(include_url=False)[0]
    if error["type"] in ("json_invalid", "json_type"):
        return InvalidRequest("the request body is not valid JSON", "invalid_json")
    if error["type"] == "model_type":
        return InvalidRequest("the request body must be a JSON object", "invalid_json")
    param = ".".join(str(part) for part in error["loc"]) or None
    message = f"{param}: {error['msg']}" if param else error["msg"]
    return InvalidRequest(message, "invalid_value", param)
