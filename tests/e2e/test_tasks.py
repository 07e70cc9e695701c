"""Async tasks end to end: 202 now, result later, from any ingress, idempotent, with signed webhooks."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar

import httpx
import nats
import orjson
import pytest

from dispatcher.bus.bus_settings import BusSettings
from dispatcher.bus.topology import ensure_task_bucket
from dispatcher.jobs.task_store import TaskStore
from dispatcher.webhooks.signing import verify_signature
from modelbus.embedded_nats import free_port
from schemas.config import ModelConfig, SimulatorBackend
from tests.support.servers import OTHER_KEY, TEST_KEY, Cluster, sql, wait_until, with_consumers

AUTH = {"Authorization": f"Bearer {TEST_KEY}"}
CHAT = {"model": "chat-sim", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 3}
SECRET = "whsec-test-secret"


@pytest.fixture
def stack(database_url: str, cluster: Cluster) -> tuple[Cluster, str, object]:
    models = [
        ModelConfig(name="chat-sim", backend=SimulatorBackend(ttft_ms=5, tokens_per_s=1000)),
        ModelConfig(name="later", backend=SimulatorBackend(ttft_ms=5)),
    ]
    config = cluster.write_config(with_consumers(models))
    cluster.env_overrides["MODELBUS_WEBHOOK_SECRET"] = SECRET
    # The test's receivers listen on loopback, which only the allow-list opens to webhooks.
    cluster.env_overrides["MODELBUS_WEBHOOK_ALLOW"] = "127.0.0.1/32"
    cluster.env_overrides["MODELBUS_WEBHOOK_BACKOFF_S"] = "0.3"
    cluster.dispatcher(config, database_url)
    cluster.worker("chat-sim", config, "w-chat")
    return cluster, database_url, config


def _wait_done(client: httpx.Client, task_id: str, timeout: float = 30) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task = client.get(f"/tasks/{task_id}").json()
        if task["status"] in ("completed", "failed"):
            return task
        time.sleep(0.1)
    raise AssertionError(f"task {task_id} did not finish: {task}")


def _audit_rows(database_url: str) -> list[dict[str, object]]:
    return [orjson.loads(row["record"]) for row in sql(database_url, "SELECT record FROM audit_log")]


def test_task_is_accepted_then_completed_and_audited_once(stack: tuple[Cluster, str, object]) -> None:
    cluster, database_url, config = stack
    gateway = cluster.ingress(config, MODELBUS_DATABASE_URL=database_url)
    with httpx.Client(base_url=gateway, headers=AUTH, timeout=30) as client:
        response = client.post("/tasks", json={"endpoint": "chat.completions", "body": CHAT})
        assert response.status_code == 202
        task = response.json()
        assert task["status"] == "queued" and task["id"].startswith("task_")
        assert response.headers["location"] == f"/v1/tasks/{task['id']}"
        done = _wait_done(client, task["id"])
    assert done["status"] == "completed" and done["worker"] == "w-chat"
    assert len(done["result"]["choices"][0]["message"]["content"].split()) == 3
    wait_until(lambda: len(_audit_rows(database_url)) == 1, 20, "no audit row for the task")
    time.sleep(0.5)
    (row,) = _audit_rows(database_url)
    assert (row["kind"], row["status"], row["request_id"], row["consumer"]) == (
        "async",
        "served",
        task["id"],
        "tester",
    )
    assert row["output"] == done["result"]


def test_prefer_respond_async_on_a_normal_endpoint(stack: tuple[Cluster, str, object]) -> None:
    cluster, _, config = stack
    gateway = cluster.ingress(config)
    with httpx.Client(base_url=gateway, headers=AUTH, timeout=30) as client:
        response = client.post(
            "/chat/completions", json={**CHAT, "stream": True}, headers={"Prefer": "respond-async"}
        )
        assert response.status_code == 202
        assert response.headers["preference-applied"] == "respond-async"
        assert _wait_done(client, response.json()["id"])["status"] == "completed"


def test_idempotency_key_returns_the_same_task(stack: tuple[Cluster, str, object]) -> None:
    cluster, _, config = stack
    gateway = cluster.ingress(config)
    with httpx.Client(base_url=gateway, headers={**AUTH, "Idempotency-Key": "job-42"}, timeout=30) as client:
        first = client.post("/tasks", json={"endpoint": "chat.completions", "body": CHAT})
        second = client.post("/tasks", json={"endpoint": "chat.completions", "body": CHAT})
    assert first.json()["id"] == second.json()["id"]
    assert second.headers["idempotent-replayed"] == "true"
    with httpx.Client(
        base_url=gateway,
        headers={"Authorization": f"Bearer {OTHER_KEY}", "Idempotency-Key": "job-42"},
        timeout=30,
    ) as other:
        theirs = other.post("/tasks", json={"endpoint": "chat.completions", "body": CHAT})
        assert theirs.json()["id"] != first.json()["id"]  # keys are per consumer
        assert other.get(f"/tasks/{first.json()['id']}").status_code == 404  # not theirs to read


def test_retry_after_a_failed_first_attempt_queues_the_claimed_task(
    stack: tuple[Cluster, str, object],
) -> None:
    """A first attempt that claimed its key and then got 503 (JetStream away) left no task: the
    retry with the same key must queue one under the claimed id, not replay nothing or fork."""
    cluster, _, config = stack
    claimed = "task_" + "ab" * 16

    async def claim_only() -> None:
        nc = await nats.connect(cluster.nats_url)
        try:
            kv = await ensure_task_bucket(nc.jetstream(), cluster.subjects, BusSettings())
            assert await TaskStore(kv).claim("tester", "job-after-503", claimed) == claimed
        finally:
            await nc.close()

    asyncio.run(claim_only())
    gateway = cluster.ingress(config)
    headers = {**AUTH, "Idempotency-Key": "job-after-503"}
    with httpx.Client(base_url=gateway, headers=headers, timeout=30) as client:
        retry = client.post("/tasks", json={"endpoint": "chat.completions", "body": CHAT})
        assert retry.status_code == 202 and retry.json()["id"] == claimed
        assert _wait_done(client, claimed)["status"] == "completed"
        again = client.post("/tasks", json={"endpoint": "chat.completions", "body": CHAT})
        assert again.json()["id"] == claimed and again.headers["idempotent-replayed"] == "true"


def test_task_survives_its_ingress_and_is_read_from_another(stack: tuple[Cluster, str, object]) -> None:
    cluster, database_url, config = stack
    first = cluster.ingress(config, MODELBUS_DATABASE_URL=database_url)
    with httpx.Client(base_url=first, headers=AUTH, timeout=30) as client:
        task_id = client.post(
            "/tasks", json={"endpoint": "chat.completions", "body": {**CHAT, "model": "later"}}
        ).json()["id"]
    next(p for p in cluster.procs if p.name.startswith("ingress")).kill()  # right after the 202
    cluster.worker("later", config, "w-later")  # the model's worker only appears now
    second = cluster.ingress(config, MODELBUS_DATABASE_URL=database_url)
    with httpx.Client(base_url=second, headers=AUTH, timeout=30) as client:
        done = _wait_done(client, task_id)
    assert done["status"] == "completed" and done["worker"] == "w-later"


class _Receiver(BaseHTTPRequestHandler):
    failures_left: ClassVar[int] = 2
    received: ClassVar[list[tuple[dict[str, str], bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if _Receiver.failures_left > 0:
            _Receiver.failures_left -= 1
            self.send_response(503)
        else:
            _Receiver.received.append((dict(self.headers), body))
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_webhook_is_signed_and_retried_until_accepted(stack: tuple[Cluster, str, object]) -> None:
    cluster, _, config = stack
    server = HTTPServer(("127.0.0.1", free_port()), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    gateway = cluster.ingress(config)
    try:
        with httpx.Client(base_url=gateway, headers=AUTH, timeout=30) as client:
            url = f"http://127.0.0.1:{server.server_address[1]}/hook"
            task_id = client.post(
                "/tasks", json={"endpoint": "chat.completions", "body": CHAT, "webhook": {"url": url}}
            ).json()["id"]
        wait_until(lambda: len(_Receiver.received) == 1, 30, "webhook never accepted")
    finally:
        server.shutdown()
    headers, body = _Receiver.received[0]
    assert _Receiver.failures_left == 0  # two refusals first, then delivered
    assert headers["Modelbus-Task-Id"] == task_id
    assert verify_signature(SECRET, headers["Modelbus-Signature"], body)
    assert not verify_signature("wrong-secret", headers["Modelbus-Signature"], body)
    assert json.loads(body)["status"] == "completed"


def test_bad_task_submissions_are_400(stack: tuple[Cluster, str, object]) -> None:
    cluster, _, config = stack
    gateway = cluster.ingress(config)
    with httpx.Client(base_url=gateway, headers=AUTH, timeout=30) as client:
        assert client.post("/tasks", json={"endpoint": "images", "body": CHAT}).status_code == 400
        assert (
            client.post(
                "/tasks", json={"endpoint": "chat.completions", "body": {"model": "chat-sim"}}
            ).status_code
            == 400
        )
        assert (
            client.post(
                "/tasks", json={"endpoint": "chat.completions", "body": {**CHAT, "model": "x"}}
            ).status_code
            == 404
        )
        assert client.get("/tasks/task_doesnotexist").status_code == 404
