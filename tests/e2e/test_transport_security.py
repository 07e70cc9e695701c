"""The whole gateway on restricted NATS users over TLS, and the ingress serving HTTPS only."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import nats
import openai
import pytest
from nats.errors import NoServersError

from modelbus.embedded_nats import free_port
from schemas.config import ModelConfig, SimulatorBackend
from schemas.policy import Limits
from tests.support.secure_nats import SecureNats, start_secure_nats
from tests.support.servers import ADMIN_KEY, TEST_KEY, Cluster, Proc, sql, wait_until, with_consumers
from tests.support.tls_files import TlsFiles, make_tls_files, nats_tls_block

NS = "sec"
AUTH = {"Authorization": f"Bearer {TEST_KEY}"}
CHAT = {"model": "chat-sim", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 3}


@pytest.fixture
def tls(tmp_path: Path) -> TlsFiles:
    return make_tls_files(tmp_path / "tls")


@pytest.fixture
def secure(tmp_path: Path, tls: TlsFiles) -> Iterator[SecureNats]:
    started = start_secure_nats(
        tmp_path / "nats", NS, ["i1"], {"w1": {"chat-sim": ["default"]}}, nats_tls_block(tls)
    )
    yield started
    started.server.stop()


@pytest.fixture
def cluster(tmp_path: Path, secure: SecureNats, tls: TlsFiles) -> Iterator[Cluster]:
    url = f"tls://127.0.0.1:{secure.server.port}"
    stack = Cluster(tmp_path, url, NS, env_overrides={"MODELBUS_NATS_TLS_CA": str(tls.ca)})
    yield stack
    stack.close()


def _verify(tls: TlsFiles) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(tls.ca))


def _https_ingress(cluster: Cluster, config: Path, env: dict[str, str], tls: TlsFiles) -> tuple[str, Proc]:
    port = free_port()
    args = ["ingress", "--port", str(port), "--tls-cert", str(tls.cert), "--tls-key", str(tls.key)]
    proc = cluster.spawn("ingress-i1", args, cluster.env(config, **env))
    base = f"https://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{base}/readyz", verify=_verify(tls), timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ready, 60, "ingress did not start", proc)
    return base, proc


def test_request_flows_with_restricted_users_over_tls(
    database_url: str, cluster: Cluster, secure: SecureNats, tls: TlsFiles
) -> None:
    modelbus_config = with_consumers(
        [ModelConfig(name="chat-sim", backend=SimulatorBackend(ttft_ms=5, tokens_per_s=2000))]
    )
    # Limits make the ingress admit against the quota counters and the worker settle them, so those
    # subjects are exercised through the restricted users too.
    modelbus_config.consumers[0].limits = Limits(requests_per_min=1000, tokens_per_day=1_000_000)
    config = cluster.write_config(modelbus_config)
    procs = [cluster.dispatcher(config, database_url, **secure.env(f"{NS}-dispatcher"))]
    procs.append(cluster.worker("chat-sim", config, "w1", **secure.env(f"{NS}-worker-w1")))
    ingress_env = {
        **secure.env(f"{NS}-ingress-i1"),
        "MODELBUS_INGRESS_ID": "i1",
        "MODELBUS_DATABASE_URL": database_url,
    }
    base, ingress = _https_ingress(cluster, config, ingress_env, tls)
    procs.append(ingress)

    client = openai.OpenAI(
        base_url=f"{base}/v1",
        api_key=TEST_KEY,
        max_retries=0,
        timeout=30,
        http_client=httpx.Client(verify=_verify(tls)),
    )
    completion = client.chat.completions.create(
        model="chat-sim", messages=[{"role": "user", "content": "hello"}], max_tokens=4
    )
    assert len(completion.choices[0].message.content.split()) == 4
    chunks = client.chat.completions.create(
        model="chat-sim", messages=[{"role": "user", "content": "hello"}], max_tokens=3, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()
    # A key issued through the admin API (the ingress writes the key bucket) works at once.
    issued = httpx.post(
        f"{base}/admin/keys",
        json={"consumer": "tester"},
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        verify=_verify(tls),
        timeout=30,
    )
    assert issued.status_code == 201, issued.text
    with_issued = openai.OpenAI(
        base_url=f"{base}/v1",
        api_key=issued.json()["key"],
        max_retries=0,
        http_client=httpx.Client(verify=_verify(tls)),
    )
    wait_until(lambda: bool(with_issued.models.list().data), 5, "issued key not accepted")
    # An async task: the worker answers on a task subject, the dispatcher collects it.
    with httpx.Client(base_url=f"{base}/v1", verify=_verify(tls), headers=AUTH, timeout=30) as http:
        task = http.post("/tasks", json={"endpoint": "chat.completions", "body": CHAT}).json()
        wait_until(
            lambda: http.get(f"/tasks/{task['id']}").json()["status"] == "completed", 30, "task not done"
        )
    # Audit events travel ingress -> stream -> dispatcher's sink -> Postgres.
    wait_until(lambda: len(sql(database_url, "SELECT 1 FROM audit_log")) >= 3, 30, "audit rows missing")
    # The operator's CLI with the admin user sees the live worker.
    admin = subprocess.run(
        [sys.executable, "-m", "modelbus.cli", "capacity", "--json"],
        env=cluster.env(config, **secure.env(f"{NS}-admin")),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert admin.returncode == 0, admin.stderr
    assert "permissions violation" not in admin.stderr.lower()
    [row] = json.loads(admin.stdout)
    assert (row["model"], row["workers"]) == ("chat-sim", 1)
    for proc in procs:
        # Complete permissions: no component was refused anything on the bus.
        assert "permissions violation" not in proc.log().lower(), proc.log()

    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError, httpx.ConnectError)):
        httpx.get(f"{base.replace('https', 'http')}/readyz", timeout=3)


def test_nats_refuses_plain_connections_and_wrong_passwords(secure: SecureNats, tls: TlsFiles) -> None:
    creds = secure.env(f"{NS}-worker-w1")

    async def attempt(**options: object) -> None:
        nc = await nats.connect(
            f"nats://127.0.0.1:{secure.server.port}",
            allow_reconnect=False,
            max_reconnect_attempts=0,
            connect_timeout=3,
            **options,  # type: ignore[arg-type]
        )
        await nc.close()

    plain = {"user": creds["MODELBUS_NATS_USER"], "password": creds["MODELBUS_NATS_PASSWORD"]}
    with pytest.raises((NoServersError, nats.errors.Error, OSError)):
        asyncio.run(attempt(**plain))
    context = _verify(tls)
    with pytest.raises((NoServersError, nats.errors.Error)):
        asyncio.run(attempt(user=plain["user"], password="wrong", tls=context))
    asyncio.run(attempt(**plain, tls=context))  # the right password over TLS is accepted
