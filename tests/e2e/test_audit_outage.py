"""Postgres stopped for a minute under load: the gateway keeps serving and no audit record is lost."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from dispatcher.store.migrate import upgrade
from schemas.config import ModelConfig, SimulatorBackend
from tests.support.servers import TEST_KEY, Cluster, sql, wait_until, with_consumers
from tests.support.stoppable_postgres import StoppablePostgres, stoppable_postgres

REQUESTS = 1000
OUTAGE_S = 60


@pytest.fixture
def postgres() -> Iterator[StoppablePostgres]:
    with stoppable_postgres("modelbus-outage-pg-") as pg:
        upgrade(pg.url)
        yield pg


def _counts(url: str) -> tuple[int, int]:
    (row,) = sql(url, "SELECT count(*) AS n, count(DISTINCT event_id) AS d FROM audit_log")
    return int(row["n"]), int(row["d"])


def test_postgres_outage_loses_no_audit_record(cluster: Cluster, postgres: StoppablePostgres) -> None:
    config = cluster.write_config(
        with_consumers([ModelConfig(name="m", backend=SimulatorBackend(ttft_ms=1))])
    )
    with cluster.together():
        cluster.dispatcher(config, postgres.url)
        gateway = cluster.ingress(config)
        cluster.worker("m", config, "w-1")
    statuses: list[int] = []
    ids: set[str] = set()

    async def load() -> None:
        # Spread the requests over the outage and a little before and after it.
        pace = (OUTAGE_S + 10) / REQUESTS
        async with httpx.AsyncClient(
            base_url=gateway, timeout=30, headers={"Authorization": f"Bearer {TEST_KEY}"}
        ) as c:

            async def one(n: int) -> None:
                await asyncio.sleep(n * pace)
                r = await c.post(
                    "/chat/completions",
                    json={"model": "m", "max_tokens": 2, "messages": [{"role": "user", "content": f"n{n}"}]},
                )
                statuses.append(r.status_code)
                ids.add(r.headers["x-request-id"])

            await asyncio.gather(*(one(n) for n in range(REQUESTS)))

    runner = threading.Thread(target=lambda: asyncio.run(load()))
    runner.start()
    time.sleep(3)
    postgres.stop()
    stopped_at = time.monotonic()
    time.sleep(OUTAGE_S)
    postgres.start()
    outage = time.monotonic() - stopped_at
    runner.join(120)

    assert outage >= OUTAGE_S
    assert len(statuses) == REQUESTS and set(statuses) == {200}  # no client saw the outage
    assert len(ids) == REQUESTS
    wait_until(lambda: _counts(postgres.url)[0] >= REQUESTS, 90, "audit backlog did not drain")
    time.sleep(1)
    assert _counts(postgres.url) == (REQUESTS, REQUESTS)  # all present, none twice
