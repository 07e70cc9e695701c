"""Fixtures that start real servers: one nats-server per test session, processes per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelbus.embedded_nats import NatsServer, single_server
from tests.servers import Cluster


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = single_server(tmp_path_factory.mktemp("nats"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def namespace() -> str:
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
def cluster(nats_server: NatsServer, namespace: str, tmp_path: Path) -> Iterator[Cluster]:
    stack = Cluster(tmp_path, nats_server.url, namespace)
    yield stack
    stack.close()
