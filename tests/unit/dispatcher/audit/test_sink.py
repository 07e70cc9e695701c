"""dispatcher/audit/sink.py from a real audit stream into a real Postgres: rows land once per event
and chained, undecodable events are dropped, and while the database is unreachable nothing is acked
(the batch waits, then lands when the database appears)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from dispatcher.audit.ledger import AuditStore
from dispatcher.audit.sink import AuditSink
from dispatcher.store.database import create_engine
from dispatcher.store.migrate import upgrade
from schemas.audit import AuditEvent, AuditStatus
from tests.unit.conftest import Bus


def _event(n: int) -> AuditEvent:
    now = int(time.time() * 1000)
    return AuditEvent(
        event_id=f"ev-{n}",
        request_id=f"r-{n}",
        endpoint="chat",
        status=AuditStatus.SERVED,
        http_status=200,
        consumer="c",
        received_ms=now,
        finished_ms=now + 5,
    )


async def _publish(bus: Bus, *payloads: bytes) -> None:
    for payload in payloads:
        await bus.js.publish(bus.subjects.audit("ingress-1"), payload)


async def _run_until(sink: AuditSink, done: object) -> None:
    """Run the sink until `done()` holds (checked between its batches), then stop it."""
    stop = asyncio.Event()
    running = asyncio.ensure_future(sink.run(stop))
    try:
        async with asyncio.timeout(20):
            while not done():  # type: ignore[operator]
                await asyncio.sleep(0.02)
    finally:
        stop.set()
        await asyncio.wait_for(running, 5)


async def _waiting(bus: Bus) -> int:
    return (await bus.js.stream_info(bus.subjects.audit_stream)).state.messages


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[AuditStore]:
    engine = create_engine(database_url)
    yield AuditStore(engine)
    await engine.dispose()


async def test_events_land_once_in_a_verified_chain_and_leave_the_stream(bus: Bus, store: AuditStore) -> None:
    events = [_event(n) for n in range(5)]
    await _publish(bus, b'{"not": "an audit event"}')  # first, so it is handled before the last row
    await _publish(bus, *(e.model_dump_json().encode() for e in events))
    await _publish(bus, events[2].model_dump_json().encode())  # published twice: one row
    sink = AuditSink(bus.nc, bus.subjects, store, None, batch_size=3)
    await _run_until(sink, lambda: sink.written == 5)
    checked, problems = await store.verify()
    assert (checked, problems) == (5, [])
    assert await _waiting(bus) == 0  # written ones acked, the undecodable one terminated


@pytest.fixture
def missing_database(postgres_admin_url: str) -> Iterator[tuple[str, str]]:
    """The URL of a database that does not exist yet, and an admin DSN to create it."""
    name = "mbtest_" + uuid.uuid4().hex[:12]
    admin = make_url(postgres_admin_url)
    yield (
        admin.set(database=name).render_as_string(False),
        admin.set(drivername="postgresql").render_as_string(False),
    )

    async def drop() -> None:
        conn = await asyncpg.connect(admin.set(drivername="postgresql").render_as_string(False))
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(drop())


async def test_nothing_is_acked_while_the_database_is_away_and_it_lands_later(
    bus: Bus, missing_database: tuple[str, str]
) -> None:
    url, admin_dsn = missing_database
    engine = create_engine(url)
    store = AuditStore(engine)
    await _publish(bus, *(_event(n).model_dump_json().encode() for n in range(3)))
    sink = AuditSink(bus.nc, bus.subjects, store, None)
    stop = asyncio.Event()
    running = asyncio.ensure_future(sink.run(stop))
    try:
        async with asyncio.timeout(10):
            while sink.failures < 2:
                await asyncio.sleep(0.02)
        assert sink.written == 0 and await _waiting(bus) == 3  # held, not acked, not dropped
        conn = await asyncpg.connect(admin_dsn)
        try:
            await conn.execute(f'CREATE DATABASE "{make_url(url).database}"')
        finally:
            await conn.close()
        await asyncio.to_thread(upgrade, url)
        async with asyncio.timeout(15):
            while sink.written < 3:
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(running, 10)
        await engine.dispose()
    assert await _waiting(bus) == 0
    assert (await store.verify())[1] == []
