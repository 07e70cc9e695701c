"""A KV watch never goes quietly deaf: a bucket deleted and created again ends it (and a fresh watch
sees the new bucket's values), on a real nats-server."""

from __future__ import annotations

import asyncio
import uuid

import nats
import pytest
from nats.js.api import KeyValueConfig

from dispatcher.bus.kv_watch import watch_bucket
from dispatcher.errors import WatchLost
from modelbus.embedded_nats import NatsServer


async def _collect(js: nats.js.JetStreamContext, bucket: str, seen: list[str]) -> None:
    kv = await js.key_value(bucket)
    async for entry in watch_bucket(js, kv, bucket, check_every_s=0.2):
        if entry is not None and entry.value:
            seen.append(entry.value.decode())


async def test_recreated_bucket_ends_the_watch_and_a_new_one_sees_it(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    bucket = "w" + uuid.uuid4().hex[:10]
    kv = await js.create_key_value(KeyValueConfig(bucket=bucket))
    await kv.put("a", b"one")
    seen: list[str] = []
    watching = asyncio.create_task(_collect(js, bucket, seen))
    for _ in range(50):
        if seen:
            break
        await asyncio.sleep(0.05)
    assert seen == ["one"]
    await js.delete_key_value(bucket)
    kv = await js.create_key_value(KeyValueConfig(bucket=bucket))
    await kv.put("b", b"two")
    with pytest.raises(WatchLost):
        await asyncio.wait_for(watching, timeout=3)
    again: list[str] = []
    watching = asyncio.create_task(_collect(js, bucket, again))
    for _ in range(50):
        if again:
            break
        await asyncio.sleep(0.05)
    assert again == ["two"]
    watching.cancel()
    await asyncio.gather(watching, return_exceptions=True)
    await js.delete_key_value(bucket)
    await nc.close()


async def test_deleted_bucket_ends_the_watch(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    bucket = "w" + uuid.uuid4().hex[:10]
    await js.create_key_value(KeyValueConfig(bucket=bucket))
    watching = asyncio.create_task(_collect(js, bucket, []))
    await asyncio.sleep(0.3)
    await js.delete_key_value(bucket)
    with pytest.raises(WatchLost):
        await asyncio.wait_for(watching, timeout=3)
    await nc.close()
