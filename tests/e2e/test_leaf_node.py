"""Workers anywhere: a worker whose only NATS connection is a leaf node serves the hub's clients."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from schemas.config import ModelConfig, SimulatorBackend
from tests.support.nats_cluster import DOMAIN, NatsCluster, leaf_server
from tests.support.servers import TEST_KEY, Cluster, with_consumers

AUTH = {"Authorization": f"Bearer {TEST_KEY}"}


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[NatsCluster]:
    nats = NatsCluster(tmp_path / "hub", size=1)
    nats.start()
    yield nats
    nats.stop()


def test_worker_attached_through_a_leaf_node_serves_requests(
    hub: NatsCluster, namespace: str, tmp_path: Path
) -> None:
    leaf = leaf_server(tmp_path / "leaf", hub.leaf_port)
    leaf.start()
    stack = Cluster(tmp_path, hub.url, namespace)
    try:
        assert leaf.port != hub.nodes[0].port
        config = stack.write_config(
            with_consumers([ModelConfig(name="remote", backend=SimulatorBackend(ttft_ms=2))])
        )
        stack.dispatcher(config)
        gateway = stack.ingress(config)
        # The worker is told nothing about the hub: it dials the leaf and nothing else.
        stack.worker("remote", config, "w-remote-site", MODELBUS_NATS_URL=leaf.url, MODELBUS_JS_DOMAIN=DOMAIN)
        with httpx.Client(base_url=gateway, headers=AUTH, timeout=30) as client:
            for n in range(5):
                body = {"model": "remote", "max_tokens": 3, "messages": [{"role": "user", "content": f"{n}"}]}
                r = client.post("/chat/completions", json=body)
                assert r.status_code == 200, r.text
                assert r.headers["x-modelbus-worker"] == "w-remote-site"
            body = {**body, "stream": True}
            with client.stream("POST", "/chat/completions", json=body) as r:
                assert r.status_code == 200
                lines = [line for line in r.iter_lines() if line.startswith("data: ")]
            assert lines[-1] == "data: [DONE]" and len(lines) >= 3
    finally:
        stack.close()
        leaf.stop()
