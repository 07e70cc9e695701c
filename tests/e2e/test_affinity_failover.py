"""The fail-over test of tests/e2e/test_failover.py with prefix affinity on: under mixed load on an R3
cluster, the request stream's leader and then a worker are killed -9; nothing may be lost or
duplicated, and the work must really have gone through the affinity buckets."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from dispatcher.store.migrate import upgrade
from schemas.config import AffinityConfig
from tests.e2e.test_failover import (
    MODEL,
    Stack,
    _check,
    _kill_stream_leader,
    _kill_worker,
    _stack,
    _under_load,
)
from tests.support.stoppable_postgres import stoppable_postgres

pytestmark = pytest.mark.timeout(420)
BUCKETS = 8


@pytest.fixture
def affinity_stack(tmp_path: Path, namespace: str) -> Iterator[Stack]:
    with stoppable_postgres("modelbus-aff-pg-") as postgres:
        upgrade(postgres.url)
        # Guest slots too: stolen work takes them at once, so steals are frequent under the faults.
        affinity = AffinityConfig(window_chars=256, buckets=BUCKETS, guest_slots=2)
        yield from _stack(tmp_path, namespace, postgres, affinity)


def _delivered(stack: Stack) -> tuple[int, list[int]]:
    """Messages delivered by the interactive FIFO consumer and by each bucket's consumer."""

    async def query() -> tuple[int, list[int]]:
        nc = await nats.connect(stack.nats.urls)
        try:
            js, s = nc.jetstream(), stack.cluster.subjects
            fifo = await js.consumer_info(s.request_stream, s.consumer(MODEL, "default"))
            buckets = [
                await js.consumer_info(s.request_stream, s.affinity_consumer(MODEL, "default", k))
                for k in range(BUCKETS)
            ]
            return fifo.delivered.consumer_seq or 0, [b.delivered.consumer_seq or 0 for b in buckets]
        finally:
            await nc.close()

    return asyncio.run(query())


def test_worker_kill_with_affinity_loses_and_duplicates_nothing(affinity_stack: Stack) -> None:
    _check(affinity_stack, _under_load(affinity_stack, (_kill_stream_leader, _kill_worker)))
    fifo, buckets = _delivered(affinity_stack)
    assert fifo == 0  # every interactive request went through a bucket ...
    assert sum(b > 0 for b in buckets) >= BUCKETS // 2  # ... spread over them
