"""A key watcher that loses its subscription recovers: after the key bucket is deleted and created
again, or after the NATS server restarts, a key revoked afterwards is refused on every ingress
within 2 s. While a watcher is down, `/readyz` says which."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import nats
from nats.js.api import KeyValueConfig

from modelbus.embedded_nats import single_server
from schemas.config import ModelConfig, SimulatorBackend
from tests.support.servers import ADMIN_KEY, Cluster, wait_until, with_consumers

FAST = SimulatorBackend(ttft_ms=1, tokens_per_s=5000)
CHAT = {"model": "m", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}


def _chat(gateway: str, key: str) -> int:
    try:
        return httpx.post(
            f"{gateway}/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {key}"}, timeout=10
        ).status_code
    except httpx.HTTPError:
        return 0


def _admin(gateway: str) -> httpx.Client:
    return httpx.Client(base_url=gateway[:-3], headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=10)


def _issue(gateways: list[str], key_id: str) -> str:
    """A new key, once every ingress accepts it (so their watches see the bucket as it is now)."""
    with _admin(gateways[0]) as admin:
        created = admin.post("/admin/keys", json={"consumer": "tester", "id": key_id})
    assert created.status_code == 201, created.text
    key: str = created.json()["key"]
    wait_until(lambda: all(_chat(g, key) == 200 for g in gateways), 20, f"{key_id} never accepted everywhere")
    return key


def _revoke_and_time(gateways: list[str], key_id: str, key: str) -> float:
    with _admin(gateways[0]) as admin:
        assert admin.delete(f"/admin/keys/{key_id}").status_code == 200
    revoked_at = time.monotonic()
    refused: dict[str, float] = {}
    while len(refused) < len(gateways) and time.monotonic() - revoked_at < 10:
        for gateway in gateways:
            if gateway not in refused and _chat(gateway, key) == 401:
                refused[gateway] = time.monotonic() - revoked_at
        time.sleep(0.02)
    assert len(refused) == len(gateways), f"not refused everywhere: {refused}"
    return max(refused.values())


def _stack(cluster: Cluster) -> list[str]:
    path = cluster.write_config(with_consumers([ModelConfig(name="m", backend=FAST)]))
    with cluster.together():
        cluster.dispatcher(path)
        gateways = [cluster.ingress(path) for _ in range(3)]
        cluster.worker("m", path, "w-m")
    return gateways


def test_revocation_after_the_key_bucket_is_deleted_and_created_again(cluster: Cluster) -> None:
    gateways = _stack(cluster)
    old = _issue(gateways, "before")
    bucket = cluster.subjects.key_bucket

    async def recreate() -> None:
        nc = await nats.connect(cluster.nats_url)
        js = nc.jetstream()
        await js.delete_key_value(bucket)
        await js.create_key_value(KeyValueConfig(bucket=bucket))
        await nc.close()

    asyncio.run(recreate())
    # The old key went with the bucket: every ingress stops accepting it.
    wait_until(lambda: all(_chat(g, old) == 401 for g in gateways), 10, "a deleted key is still accepted")
    key = _issue(gateways, "after")
    slowest = _revoke_and_time(gateways, "after", key)
    print(f"after the bucket was recreated, revocation refused on all ingresses in {slowest * 1000:.0f} ms")
    assert slowest < 2.0
    logs = "".join(p.log() for p in cluster.procs if p.name.startswith("ingress"))
    assert "background task 'key-watch' stopped" in logs  # it said so, and came back


def test_revocation_after_the_nats_server_restarts(cluster: Cluster, tmp_path: Path) -> None:
    server = single_server(tmp_path / "own-nats")
    server.start()
    try:
        cluster.nats_url = server.url
        gateways = _stack(cluster)
        _issue(gateways, "warm")
        server.stop()
        time.sleep(1.0)
        server.start()
        key = _issue(gateways, "after-restart")
        slowest = _revoke_and_time(gateways, "after-restart", key)
        print(f"after a NATS restart, revocation refused on all ingresses in {slowest * 1000:.0f} ms")
        assert slowest < 2.0
    finally:
        cluster.close()
        server.stop()


def test_readyz_names_a_watcher_that_is_down(cluster: Cluster) -> None:
    gateways = _stack(cluster)
    base = gateways[0][:-3]
    assert httpx.get(f"{base}/readyz").status_code == 200

    async def delete_bucket() -> None:
        nc = await nats.connect(cluster.nats_url)
        await nc.jetstream().delete_key_value(cluster.subjects.key_bucket)
        await nc.close()

    asyncio.run(delete_bucket())
    # The watch ends, and each restart fails until the bucket is back: not ready, and it says why.
    wait_until(lambda: "key-watch" in httpx.get(f"{base}/readyz").text, 10, "readyz never named the watcher")
    assert httpx.get(f"{base}/readyz").status_code == 503
    metrics = httpx.get(f"{base}/metrics").text
    assert 'modelbus_background_task_up{component="ingress",task="key-watch"} 0.0' in metrics
