"""Several processes of one ingress or one worker (`--workers N`, `--processes N`): one port, one set
of slots, one stop."""

from __future__ import annotations

import signal
import socket

import httpx

from schemas.config import ModelConfig, SimulatorBackend
from tests.support.servers import ADMIN_KEY, TEST_KEY, Cluster, free_port, wait_until, with_consumers

MODEL = "multi"


def _capacity(gateway: str) -> dict[str, object]:
    rows = httpx.get(
        f"{gateway}/admin/capacity", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=10
    ).json()["data"]
    return {row["model"]: row for row in rows}.get(MODEL, {})


def test_ingress_workers_share_one_port_and_stop_together(cluster: Cluster) -> None:
    models = [
        ModelConfig(name=MODEL, max_concurrency=3, backend=SimulatorBackend(ttft_ms=1, tokens_per_s=1e4))
    ]
    config = cluster.write_config(with_consumers(models))
    port = free_port()
    env = cluster.env(config, MODELBUS_INGRESS_ID="gw")
    parent = cluster.spawn("ingress-multi", ["ingress", "--port", str(port), "--workers", "2"], env)
    gateway = f"http://127.0.0.1:{port}"
    wait_until(
        lambda: "ingress gw-0 ready" in parent.log() and "ingress gw-1 ready" in parent.log(),
        60,
        f"ingress copies did not start:\n{parent.log()}",
        parent,
    )
    # A worker run as two processes: two registered workers holding the model's 3 slots between them.
    cluster.spawn("w-multi", ["worker", "--model", MODEL, "--processes", "2"], cluster.env(config))
    wait_until(lambda: _capacity(gateway).get("workers") == 2, 60, "worker copies not registered")
    assert _capacity(gateway)["capacity"] == 3

    for n in range(12):  # a new connection each: the kernel spreads them over both copies
        reply = httpx.post(
            f"{gateway}/v1/chat/completions",
            headers={"Authorization": f"Bearer {TEST_KEY}"},
            json={"model": MODEL, "messages": [{"role": "user", "content": f"hi {n}"}], "max_tokens": 4},
            timeout=30,
        )
        assert reply.status_code == 200, reply.text

    parent.popen.send_signal(signal.SIGTERM)
    assert parent.popen.wait(60) == 0
    with socket.socket() as probe:  # every copy let go of the port
        probe.bind(("127.0.0.1", port))


def test_ingress_copies_that_cannot_start_stop_the_parent(cluster: Cluster) -> None:
    config = cluster.write_config(with_consumers([ModelConfig(name=MODEL)]))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        parent = cluster.spawn(
            "ingress-blocked", ["ingress", "--port", str(port), "--workers", "2"], cluster.env(config)
        )
        assert parent.popen.wait(90) != 0
    assert "while starting: stopping all" in parent.log()
