"""ingress/error_responses.py: the one mapping from bus failures to HTTP, and the handlers that give every
error OpenAI's shape (Anthropic's on /v1/messages), driven through a real ASGI app."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from nats.errors import ConnectionClosedError
from pydantic import BaseModel

from dispatcher.errors import (
    BusUnavailable,
    DeadlineExceeded,
    Forbidden,
    Interrupted,
    ModelbusError,
    OverLimit,
    QueueFull,
    RemoteError,
    RequestTooLarge,
    StreamBroken,
    Unauthenticated,
    WorkerLost,
)
from ingress.error_responses import APIError, from_bus_error, install_error_handlers
from schemas.envelope import ErrorCode, ErrorFrame


@pytest.mark.parametrize(
    ("error", "status", "code", "retry_after"),
    [
        (Forbidden("no", "permission_denied"), 403, "permission_denied", None),
        (
            OverLimit(
                "slow down", "rate_limit_exceeded", retry_after_s=2.2, window="minute", impossible=False
            ),
            429,
            "rate_limit_exceeded",
            "3",  # whole seconds, rounded up
        ),
        (
            RemoteError(
                ErrorFrame(
                    code=ErrorCode.BACKEND_ERROR,
                    message="bad",
                    status=400,
                    api_code="context_length_exceeded",
                )
            ),
            400,
            "context_length_exceeded",
            None,
        ),
        (
            RemoteError(
                ErrorFrame(code=ErrorCode.BACKEND_UNAVAILABLE, message="down", status=503, retryable=True)
            ),
            503,
            "backend_unavailable",
            "1",
        ),
        (RequestTooLarge("big"), 413, "request_too_large", None),
        (QueueFull("full"), 503, "queue_full", "1"),
        (BusUnavailable("away"), 503, "bus_unavailable", "1"),
        (DeadlineExceeded("late"), 504, "deadline_exceeded", "1"),
        (WorkerLost("gone"), 502, "worker_lost", "1"),
        (StreamBroken("holes"), 502, "stream_broken", "1"),
        (Interrupted("left"), 502, "gateway_error", "1"),
    ],
)
def test_each_bus_error_has_its_status_code_and_retry_advice(
    error: ModelbusError, status: int, code: str, retry_after: str | None
) -> None:
    api = from_bus_error(error)
    assert (api.status, api.code, api.headers.get("Retry-After")) == (status, code, retry_after)


def test_an_unauthenticated_refusal_names_the_scheme() -> None:
    api = from_bus_error(Unauthenticated("key revoked", "invalid_api_key"))
    assert api.status == 401 and api.headers["WWW-Authenticate"] == "Bearer"


class Body(BaseModel):
    n: int


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    install_error_handlers(app, ["POST /v1/chat/completions", "POST /v1/messages"])

    @app.post("/v1/chat/completions")
    async def chat(body: Body) -> dict[str, int]:
        if body.n == 1:
            raise APIError(400, "n must not be 1", "invalid_value", "n")
        if body.n == 2:
            raise DeadlineExceeded("late")
        if body.n == 3:
            raise ConnectionClosedError()
        if body.n == 4:
            raise RuntimeError("secret internals")
        return {"n": body.n}

    @app.post("/v1/messages")
    async def messages() -> None:
        raise Forbidden("not yours", "permission_denied")

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
        yield http


async def test_an_api_error_keeps_its_status_code_and_param(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/chat/completions", json={"n": 1})
    assert response.status_code == 400
    assert response.json()["error"] | {"message": None} == {
        "message": None,
        "type": "invalid_request_error",
        "param": "n",
        "code": "invalid_value",
    }


async def test_a_bus_error_is_mapped_once_with_retry_after(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/chat/completions", json={"n": 2})
    assert response.status_code == 504 and response.headers["retry-after"] == "1"
    assert response.json()["error"]["code"] == "deadline_exceeded"


async def test_nats_being_away_is_a_503_not_a_500(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/chat/completions", json={"n": 3})
    assert response.status_code == 503 and response.json()["error"]["code"] == "bus_unavailable"


async def test_an_unexpected_error_is_a_500_that_reveals_nothing(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/chat/completions", json={"n": 4})
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    assert "secret" not in response.text


async def test_a_validation_error_names_the_field(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/chat/completions", json={"n": "many"})
    error = response.json()["error"]
    assert response.status_code == 400 and error["param"] == "n" and error["message"].startswith("n: ")


async def test_an_unknown_route_lists_what_is_served(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/images/generations", json={})
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "unsupported_endpoint"
    assert (
        "POST /v1/images/generations" in error["message"] and "POST /v1/chat/completions" in error["message"]
    )


async def test_errors_on_the_messages_api_have_anthropics_shape(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/messages", json={})
    assert response.status_code == 403
    assert response.json() == {"type": "error", "error": {"type": "permission_error", "message": "not yours"}}
