"""Every error leaves the ingress here, in OpenAI's error shape with the matching HTTP status."""

from __future__ import annotations

import logging
import math

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from nats.errors import Error as NatsError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from dispatcher.errors import (
    RETRY_SOON_S,
    BusUnavailable,
    DeadlineExceeded,
    ModelbusError,
    QueueFull,
    Refused,
    RemoteError,
    RequestTooLarge,
    StreamBroken,
    Unauthenticated,
    WorkerLost,
)
from schemas.dialects import anthropic_error
from schemas.endpoints import BY_PATH, ErrorStyle
from schemas.envelope import ErrorCode
from schemas.openai import error_body

log = logging.getLogger(__name__)


class APIError(Exception):
    """An error the ingress itself decides on (bad input, unknown model, bad key)."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or {}


class TokenRejected(APIError):
    """A bearer token is not acceptable: 401. The message is safe to show (it never contains the
    token); ingress/auth.py adds the `WWW-Authenticate` header every rejected credential gets."""

    def __init__(self, message: str) -> None:
        super().__init__(401, message, "invalid_api_key")


def from_bus_error(exc: ModelbusError) -> APIError:
    """The one mapping from bus failures to HTTP; retryable ones carry Retry-After."""
    retry = {"Retry-After": str(math.ceil(RETRY_SOON_S))}
    if isinstance(exc, Refused):
        headers = {}
        if exc.retry_after_s is not None:
            headers["Retry-After"] = str(math.ceil(exc.retry_after_s))
        if isinstance(exc, Unauthenticated):
            headers["WWW-Authenticate"] = "Bearer"
        return APIError(exc.status, exc.message, exc.code, exc.param, headers)
    if isinstance(exc, RemoteError):
        headers = retry if exc.retryable else {}
        return APIError(exc.status, exc.message, exc.api_code or exc.code.value, exc.param, headers)
    if isinstance(exc, RequestTooLarge):
        return APIError(413, str(exc), "request_too_large")
    if isinstance(exc, QueueFull):
        return APIError(503, "the model's queue is full, retry later", "queue_full", headers=retry)
    if isinstance(exc, BusUnavailable):
        return APIError(503, "the gateway cannot queue requests right now", "bus_unavailable", headers=retry)
    if isinstance(exc, DeadlineExceeded):
        return APIError(
            504,
            "no worker answered before the request deadline",
            ErrorCode.DEADLINE_EXCEEDED.value,
            headers=retry,
        )
    if isinstance(exc, WorkerLost):
        return APIError(
            502, "the worker serving this request was lost", ErrorCode.WORKER_LOST.value, headers=retry
        )
    if isinstance(exc, StreamBroken):
        return APIError(
            502, "part of the reply was lost in transit", ErrorCode.STREAM_BROKEN.value, headers=retry
        )
    return APIError(502, "the request failed in the gateway", "gateway_error", headers=retry)


def error_payload(error: APIError, style: ErrorStyle = "openai") -> bytes:
    """The error body in the shape the endpoint's clients parse: OpenAI's, or Anthropic's."""
    if style == "anthropic":
        return orjson.dumps(anthropic_error(error.status, error.message))
    return error_body(error.status, error.message, error.code, error.param).model_dump_json().encode()


def error_response(error: APIError, style: ErrorStyle = "openai") -> Response:
    return Response(
        error_payload(error, style),
        status_code=error.status,
        headers=error.headers,
        media_type="application/json",
    )


def _noted(request: Request, error: APIError) -> Response:
    """The response, with the error noted on the request's audit draft (if it has one)."""
    draft = request.scope.get("state", {}).get("audit")
    if draft is not None:
        draft.error_code, draft.error_message = error.code, error.message
    spec = BY_PATH.get(request.url.path)
    return error_response(error, spec.errors if spec is not None else "openai")


def answer_error(request: Request, exc: Exception) -> Response:
    """The response to an exception raised while serving `request`: the one mapping, used by the
    FastAPI handlers below and by the inference edge (ingress/inference_edge.py) alike."""
    if isinstance(exc, APIError):
        return _noted(request, exc)
    if isinstance(exc, ModelbusError):
        return _noted(request, from_bus_error(exc))
    if isinstance(exc, NatsError):
        # Task status and idempotency live in NATS KV: during a JetStream leader election or a
        # reconnect those calls fail for a few seconds. That is the bus being away, not a bug.
        log.warning("NATS unavailable on %s %s: %s", request.method, request.url.path, type(exc).__name__)
        return _noted(request, from_bus_error(BusUnavailable(str(exc))))
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _noted(request, APIError(500, "internal gateway error", "internal_error"))


def install_error_handlers(app: FastAPI, served: list[str]) -> None:
    """`served`: the client API's routes (`POST /v1/responses`, ...), named when there is no route."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> Response:
        return answer_error(request, exc)

    @app.exception_handler(ModelbusError)
    async def _bus_error(request: Request, exc: ModelbusError) -> Response:
        return answer_error(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        param = ".".join(str(p) for p in first["loc"] if p != "body") or None
        message = f"{param}: {first['msg']}" if param else str(first["msg"])
        return _noted(request, APIError(400, message, "invalid_value", param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code in (404, 405) and exc.detail in ("Not Found", "Method Not Allowed"):
            # No route: say so in a way that tells a gateway limitation from a typo.
            message = f"Modelbus does not serve {request.method} {request.url.path}; it serves " + ", ".join(
                served
            )
            return _noted(request, APIError(exc.status_code, message, "unsupported_endpoint"))
        return _noted(request, APIError(exc.status_code, str(exc.detail), headers=dict(exc.headers or {})))

    @app.exception_handler(NatsError)
    async def _nats(request: Request, exc: NatsError) -> Response:
        return answer_error(request, exc)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        return answer_error(request, exc)
