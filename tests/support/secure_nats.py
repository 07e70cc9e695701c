"""A real nats-server with Modelbus's generated users and permissions (and optionally TLS)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from modelbus.embedded_nats import NatsServer, free_port, write_config
from modelbus.nats_config_cli import SERVER_FILE, generate


@dataclass
class SecureNats:
    server: NatsServer
    credentials: dict[str, dict[str, str]]  # user -> MODELBUS_* variables

    def env(self, user: str) -> dict[str, str]:
        return dict(self.credentials[user])


def start_secure_nats(
    tmp: Path,
    namespace: str,
    ingress_ids: Sequence[str],
    workers: Mapping[str, Mapping[str, Sequence[str]]],
    tls_block: str = "",
    buckets: Mapping[str, int] | None = None,
) -> SecureNats:
    written = generate(tmp / "creds", namespace, ingress_ids, workers, buckets)
    credentials = {}
    for user, path in written.items():
        pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line)
        credentials[user] = dict(pairs)
    port = free_port()
    config = tmp / "nats.conf"
    auth = (tmp / "creds" / SERVER_FILE).read_text()
    write_config(config, port, tmp / "jetstream", extra=auth + tls_block)
    server = NatsServer(config, port, tmp / "nats.log")
    server.start()
    return SecureNats(server, credentials)
