"""Bad input gets the right 4xx in OpenAI's error shape; odd model names stay inside their subject."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import openai
import pytest

from modelbus.embedded_nats import NatsServer
from schemas.config import ModelConfig, SimulatorBackend
from tests.support.servers import TEST_KEY, Cluster, with_consumers

# Configured names that would be wildcards, extra tokens or collisions if put in a subject raw.
ODD_NAMES = ["llama-3.1", "llama-3_2E1", "a*", "x y", "ünï", "tail>"]


@pytest.fixture(scope="module")
def gateway(nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    cluster = Cluster(tmp_path_factory.mktemp("bad"), nats_server.url, "t" + uuid.uuid4().hex[:10])
    models = [ModelConfig(name=n, backend=SimulatorBackend(ttft_ms=0, tokens_per_s=5000)) for n in ODD_NAMES]
    config = cluster.write_config(with_consumers(models))
    with cluster.together():
        url = cluster.ingress(config)
        for index, name in enumerate(ODD_NAMES):
            cluster.worker(name, config, f"w-{index}")
    yield url
    cluster.close()


@pytest.fixture
def http(gateway: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway, headers={"Authorization": f"Bearer {TEST_KEY}"}, timeout=30) as c:
        yield c


def _assert_openai_error(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert error["message"]
    return error


CHAT = "/chat/completions"
MSG = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (b"{not json", 400, None),
        (b"", 400, None),
        (b"[1, 2]", 400, None),
        (b'{"model": "llama-3.1"}', 400, "messages"),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', 400, "model"),
        (b'{"model": 42, "messages": []}', 400, "model"),
        (b'{"model": "llama-3.1", "messages": "hi"}', 400, "messages"),
        (b'{"model": "llama-3.1", "messages": [{"role": "wizard", "content": "x"}]}', 400, "messages.0.role"),
        (
            b'{"model": "llama-3.1", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}',
            400,
            "max_tokens",
        ),
        (
            b'{"model": "llama-3.1", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}',
            400,
            "temperature",
        ),
        (b'{"model": "", "messages": [{"role": "user", "content": "x"}]}', 400, "model"),
    ],
)
def test_malformed_requests_are_400(http: httpx.Client, body: bytes, status: int, param: str | None) -> None:
    error = _assert_openai_error(http.post(CHAT, content=body), status)
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param


def test_eight_megabyte_body_is_413(http: httpx.Client) -> None:
    huge = "x" * (8 * 1024 * 1024)
    response = http.post(CHAT, json={"model": "llama-3.1", "messages": [{"role": "user", "content": huge}]})
    _assert_openai_error(response, 413)


@pytest.mark.parametrize("name", ["a.b", "*", ">", "x  y", "ünïcode", "llama-3", "llama-3.1.*", "mb.req.>"])
def test_unknown_odd_model_names_are_404(http: httpx.Client, name: str) -> None:
    error = _assert_openai_error(http.post(CHAT, json={"model": name, "messages": MSG}), 404)
    assert error["code"] == "model_not_found"


@pytest.mark.parametrize("name", ODD_NAMES)
def test_each_odd_model_is_served_by_its_own_worker(gateway: str, name: str) -> None:
    client = openai.OpenAI(base_url=gateway, api_key=TEST_KEY, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model=name, messages=MSG, max_tokens=2)
    assert raw.parse().model == name
    assert raw.headers["x-modelbus-worker"] == f"w-{ODD_NAMES.index(name)}"


def test_missing_and_malformed_authorization_are_401(gateway: str) -> None:
    with httpx.Client(base_url=gateway) as anonymous:
        for headers in ({}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer"}):
            error = _assert_openai_error(
                anonymous.post(CHAT, json={"model": "x", "messages": MSG}, headers=headers), 401
            )
            assert error["type"] == "authentication_error"


def test_bad_timeout_header_is_400(http: httpx.Client) -> None:
    response = http.post(
        CHAT, json={"model": "llama-3.1", "messages": MSG}, headers={"x-modelbus-timeout": "soon"}
    )
    _assert_openai_error(response, 400)


def test_server_stays_up_after_bad_input(http: httpx.Client, gateway: str) -> None:
    for body in (b"\xff\xfe", b"{" * 10_000, b'{"model": null}'):
        assert http.post(CHAT, content=body).status_code == 400
    assert httpx.get(gateway.removesuffix("/v1") + "/healthz").status_code == 200
    ok = http.post(CHAT, json={"model": "llama-3.1", "messages": MSG, "max_tokens": 1})
    assert ok.status_code == 200
