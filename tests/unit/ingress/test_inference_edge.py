"""The inference edge in front of the FastAPI app (ingress/inference_edge.py), driven in-process
without start-up: what it serves itself, what it hands to FastAPI, and that a failure inside it is
answered in OpenAI's shape with the request's id, as the FastAPI route's would be. The full path
(auth, admission, relay, audit) runs against real servers in tests/e2e."""

from __future__ import annotations

import httpx

from ingress.app import create_edge
from ingress.ingress_settings import IngressSettings
from schemas.config import ModelbusConfig


def _client() -> httpx.AsyncClient:
    edge = create_edge(IngressSettings(), ModelbusConfig())
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=edge), base_url="http://ingress")


async def test_a_failure_inside_the_edge_is_an_openai_error_with_the_request_id() -> None:
    # Before start-up there are no services: the edge's handler fails, and says so properly.
    async with _client() as client:
        response = await client.post("/v1/chat/completions", json={"model": "m", "messages": []})
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    assert len(response.headers["x-request-id"]) == 32


async def test_other_methods_on_an_inference_path_go_to_fastapi() -> None:
    async with _client() as client:
        response = await client.get("/v1/chat/completions")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "unsupported_endpoint"


async def test_paths_outside_the_endpoint_table_go_to_fastapi() -> None:
    async with _client() as client:
        response = await client.post("/v1/chat/completion")  # a typo: no such endpoint
    assert response.status_code == 404
    assert "Modelbus does not serve POST /v1/chat/completion" in response.json()["error"]["message"]
