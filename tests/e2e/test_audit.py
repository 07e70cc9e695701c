"""Every request leaves exactly one audit row — served, failed, rejected or cancelled — without secrets."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import orjson
import pytest

from schemas.config import ModelConfig, SimulatorBackend
from schemas.envelope import Endpoint
from tests.support.servers import ADMIN_KEY, TEST_KEY, Cluster, sql, wait_until, with_consumers

AUTH = {"Authorization": f"Bearer {TEST_KEY}"}
MSG = [{"role": "user", "content": "What is the capital of France?"}]
WRONG_KEY = "mb-wrong-key-abcdefabcdefabcdefabcdef"


def _rows(database_url: str) -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}
    for row in sql(database_url, "SELECT request_id, record FROM audit_log ORDER BY seq"):
        assert row["request_id"] not in out, "two rows for one request"
        out[row["request_id"]] = orjson.loads(row["record"])
    return out


@pytest.fixture
def gateway(database_url: str, cluster: Cluster) -> str:
    cluster.env_overrides["MODELBUS_DATABASE_URL"] = database_url
    models = [
        ModelConfig(name="chat-sim", backend=SimulatorBackend(ttft_ms=5, tokens_per_s=2000)),
        ModelConfig(
            name="slow", backend=SimulatorBackend(ttft_ms=0, tokens_per_s=20, default_max_tokens=400)
        ),
        ModelConfig(name="embed-sim", endpoints=[Endpoint.EMBEDDINGS], backend=SimulatorBackend()),
        ModelConfig(name="nobody-home"),
    ]
    config = cluster.write_config(with_consumers(models))
    with cluster.together():
        cluster.dispatcher(config, database_url)
        url = cluster.ingress(config)
        for name in ("chat-sim", "slow", "embed-sim"):
            cluster.worker(name, config, f"w-{name}")
    return url


def test_every_kind_of_request_leaves_exactly_one_row(gateway: str, database_url: str) -> None:
    ids: dict[str, str] = {}
    with httpx.Client(base_url=gateway, timeout=30) as http:
        ids["served"] = http.post(
            "/chat/completions", headers=AUTH, json={"model": "chat-sim", "messages": MSG, "max_tokens": 4}
        ).headers["x-request-id"]
        with http.stream(
            "POST",
            "/chat/completions",
            headers=AUTH,
            json={"model": "chat-sim", "messages": MSG, "max_tokens": 5, "stream": True},
        ) as r:
            r.read()
            ids["streamed"] = r.headers["x-request-id"]
        ids["embedded"] = http.post(
            "/embeddings", headers=AUTH, json={"model": "embed-sim", "input": ["a", "b"]}
        ).headers["x-request-id"]
        ids["bad_key"] = http.post(
            "/chat/completions",
            headers={"Authorization": f"Bearer {WRONG_KEY}"},
            json={"model": "chat-sim", "messages": MSG},
        ).headers["x-request-id"]
        ids["bad_json"] = http.post("/chat/completions", headers=AUTH, content=b"{oops").headers[
            "x-request-id"
        ]
        ids["unknown_model"] = http.post(
            "/chat/completions", headers=AUTH, json={"model": "nope", "messages": MSG}
        ).headers["x-request-id"]
        ids["timed_out"] = http.post(
            "/chat/completions",
            headers={**AUTH, "x-modelbus-timeout": "1"},
            json={"model": "nobody-home", "messages": MSG},
        ).headers["x-request-id"]
        with http.stream(
            "POST", "/chat/completions", headers=AUTH, json={"model": "slow", "messages": MSG, "stream": True}
        ) as r:
            ids["cancelled"] = r.headers["x-request-id"]
            for line in r.iter_lines():
                if line.startswith("data:"):
                    break

    wait_until(lambda: set(ids.values()) <= set(_rows(database_url)), 30, "audit rows missing")
    time.sleep(0.5)
    rows = _rows(database_url)
    assert len(rows) == len(ids)  # nothing twice, nothing extra
    row = {kind: rows[request_id] for kind, request_id in ids.items()}

    served = row["served"]
    assert (served["status"], served["http_status"], served["consumer"], served["key_id"]) == (
        "served",
        200,
        "tester",
        "test-key",
    )
    assert served["model_requested"] == served["model_served"] == "chat-sim"
    assert served["worker"] == "w-chat-sim" and served["backend"] == "simulator"
    assert served["input"]["messages"] == MSG
    assert len(served["output"]["choices"][0]["message"]["content"].split()) == 4
    assert served["completion_tokens"] == 4 and served["finish_reason"] == "length"
    assert served["received_ms"] <= served["enqueued_ms"] <= served["picked_up_ms"] <= served["finished_ms"]
    assert served["prompt_hash"]

    streamed = row["streamed"]
    assert streamed["status"] == "served" and len(streamed["output"]["text"].split()) == 5
    assert streamed["first_token_ms"] >= streamed["picked_up_ms"]
    assert streamed["prompt_hash"] == served["prompt_hash"]  # same prompt, same hash

    assert row["embedded"]["output"] == {"embeddings": 2, "dimensions": 32}
    assert (row["bad_key"]["status"], row["bad_key"]["http_status"], row["bad_key"]["consumer"]) == (
        "rejected",
        401,
        None,
    )
    assert (row["bad_json"]["status"], row["bad_json"]["http_status"], row["bad_json"]["consumer"]) == (
        "rejected",
        400,
        "tester",
    )
    assert (row["unknown_model"]["status"], row["unknown_model"]["error_code"]) == (
        "rejected",
        "model_not_found",
    )
    assert (row["timed_out"]["status"], row["timed_out"]["http_status"]) == ("failed", 504)
    assert row["timed_out"]["error_code"] == "deadline_exceeded"
    assert row["cancelled"]["status"] == "cancelled"

    everything = orjson.dumps(rows).decode()
    for secret in (TEST_KEY, WRONG_KEY, "Bearer"):
        assert secret not in everything


def test_openai_sdk_requests_are_audited_and_the_chain_verifies(gateway: str, database_url: str) -> None:
    client = openai.OpenAI(base_url=gateway, api_key=TEST_KEY, max_retries=0)
    for n in range(5):
        client.chat.completions.create(model="chat-sim", messages=[{"role": "user", "content": f"q{n}"}])
    wait_until(lambda: len(_rows(database_url)) == 5, 30, "audit rows missing")
    from dispatcher.audit.ledger import AuditStore
    from dispatcher.store.database import create_engine

    async def check() -> tuple[int, list[object]]:
        engine = create_engine(database_url)
        try:
            return await AuditStore(engine).verify()  # type: ignore[return-value]
        finally:
            await engine.dispose()

    checked, problems = asyncio.run(check())
    assert (checked, problems) == (5, [])


def test_admin_api_answers_audit_questions_for_admins_only(gateway: str, database_url: str) -> None:
    client = openai.OpenAI(base_url=gateway, api_key=TEST_KEY, max_retries=0)
    client.chat.completions.create(model="chat-sim", messages=[{"role": "user", "content": "find me: kiwi"}])
    client.chat.completions.create(model="chat-sim", messages=[{"role": "user", "content": "other"}])
    wait_until(lambda: len(_rows(database_url)) == 2, 30, "audit rows missing")
    admin_url = gateway.removesuffix("/v1") + "/admin"
    with httpx.Client(base_url=admin_url, timeout=30) as http:
        forbidden = http.get("/audit", headers=AUTH)
        assert forbidden.status_code == 403 and forbidden.json()["error"]["type"] == "permission_error"
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        found = http.get("/audit", headers=admin, params={"text": "kiwi", "consumer": "tester"}).json()[
            "data"
        ]
        assert len(found) == 1 and found[0]["input"]["messages"][0]["content"] == "find me: kiwi"
        assert http.get("/audit", headers=admin, params={"model": "nope"}).json()["data"] == []
        verified = http.get("/audit/verify", headers=admin).json()
        assert {k: verified[k] for k in ("rows", "ok", "problems")} == {"rows": 2, "ok": True, "problems": []}
        assert "checkpoints not checked" in verified["note"]  # no verify key given to this ingress
