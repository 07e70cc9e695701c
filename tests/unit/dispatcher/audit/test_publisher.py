"""The pipelined audit publisher against a real nats-server and Postgres: bounded, and nothing lost
or doubled while the audit stream is away."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

import asyncpg
import nats
import pytest
from sqlalchemy.engine import make_url

from dispatcher.audit.ledger import AuditStore
from dispatcher.audit.publisher import AuditPublisher
from dispatcher.audit.sink import AuditSink
from dispatcher.bus.bus_settings import BusSettings
from dispatcher.bus.subjects import Subjects
from dispatcher.bus.topology import ensure_streams
from dispatcher.store.database import create_engine
from modelbus.embedded_nats import NatsServer
from schemas.audit import AuditEvent, AuditStatus
from tests.support.servers import small_streams


def _event(n: int) -> AuditEvent:
    now = int(time.time() * 1000)
    return AuditEvent(
        event_id=f"ev-{n}-{uuid.uuid4().hex[:8]}",
        request_id=f"req-{n}",
        endpoint="chat",
        status=AuditStatus.SERVED,
        http_status=200,
        consumer="team-a",
        input={"messages": [{"role": "user", "content": f"question {n}"}]},
        received_ms=now,
        finished_ms=now + 5,
    )


async def _until(condition: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.02)  # polls a counter; nothing to subscribe to


@pytest.mark.timeout(120)
async def test_events_emitted_while_the_stream_is_away_are_all_stored_once(
    nats_server: NatsServer, database_url: str
) -> None:
    nc = await nats.connect(nats_server.url)
    subjects = Subjects("ap" + uuid.uuid4().hex[:8])
    settings = BusSettings(nats_url=nats_server.url, namespace=subjects.namespace, **small_streams())
    window = 8
    publisher = AuditPublisher(nc, subjects, "t", window=window, ack_timeout_s=1.0)
    events = [_event(n) for n in range(200)]
    for event in events:
        publisher.emit(event)
    pump = asyncio.create_task(publisher.run())
    # No audit stream yet: every publish is refused, each event keeps its slot and is retried, and
    # the window stops the publisher from taking more (back-pressure).
    await _until(lambda: publisher.retried >= 2 * window, "retries while the stream is away")
    assert publisher.published == 0
    assert publisher.unconfirmed == window
    assert publisher.backlog == len(events) - window - 1  # one more waits at the window's door

    await ensure_streams(nc.jetstream(), subjects, settings, nc.max_payload, True)
    await _until(lambda: publisher.published == len(events), "all published once the stream is back")
    assert publisher.unconfirmed == 0 and publisher.backlog == 0 and publisher.dropped == 0

    engine = create_engine(database_url)
    store = AuditStore(engine)
    sink = AuditSink(nc, subjects, store, None, batch_size=64)
    stop = asyncio.Event()
    draining = asyncio.create_task(sink.run(stop))
    await _until(lambda: sink.written >= len(events), "the sink stored every event")
    stop.set()
    await draining
    pump.cancel()
    conn = await asyncpg.connect(make_url(database_url).set(drivername="postgresql").render_as_string(False))
    rows = await conn.fetch("SELECT event_id, count(*) AS n FROM audit_log GROUP BY event_id")
    await conn.close()
    assert {row["event_id"]: row["n"] for row in rows} == {event.event_id: 1 for event in events}
    checked, problems = await store.verify()
    assert checked == len(events) and problems == []
    await engine.dispose()
    await nc.close()


async def test_flush_waits_for_every_ack(nats_server: NatsServer) -> None:
    """Without a running pump (as the CLI uses it): flush publishes and returns once all are acked."""
    nc = await nats.connect(nats_server.url)
    subjects = Subjects("af" + uuid.uuid4().hex[:8])
    settings = BusSettings(nats_url=nats_server.url, namespace=subjects.namespace, **small_streams())
    js = nc.jetstream()
    await ensure_streams(js, subjects, settings, nc.max_payload, True)
    publisher = AuditPublisher(nc, subjects, "cli", window=4)
    for n in range(50):
        publisher.emit(_event(n))
    await publisher.flush(timeout=20)
    assert publisher.published == 50 and publisher.unconfirmed == 0
    info = await js.stream_info(subjects.audit_stream)
    assert info.state.messages == 50
    await nc.close()


async def test_an_event_whose_ack_is_lost_is_sent_again_and_stored_once(nats_server: NatsServer) -> None:
    """The stream stores the first copy but the publisher never sees its ack (timed out at once):
    the copy sent again has the same Nats-Msg-Id, so the stream keeps one message per event."""
    nc = await nats.connect(nats_server.url)
    subjects = Subjects("al" + uuid.uuid4().hex[:8])
    settings = BusSettings(nats_url=nats_server.url, namespace=subjects.namespace, **small_streams())
    js = nc.jetstream()
    await ensure_streams(js, subjects, settings, nc.max_payload, True)
    events = [_event(n) for n in range(20)]
    publisher = AuditPublisher(nc, subjects, "t", window=64, ack_timeout_s=0.0)  # no ack can win
    for event in events:
        publisher.emit(event)
    pump = asyncio.create_task(publisher.run())
    await _until(lambda: publisher.retried >= len(events), "every first ack given up")
    assert publisher.published == 0
    async with asyncio.timeout(10):  # the first copies land (the stream stores them asynchronously)
        while (await js.stream_info(subjects.audit_stream)).state.messages < len(events):
            await asyncio.sleep(0.02)
    publisher._ack_timeout_s = 5.0  # acks may arrive from now on
    await _until(lambda: publisher.published == len(events), "all confirmed")
    pump.cancel()
    stored = await js.stream_info(subjects.audit_stream)
    assert stored.state.messages == len(events)
    await nc.close()
