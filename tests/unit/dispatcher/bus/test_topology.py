"""dispatcher/bus/topology.py on a real nats-server: creation is idempotent and updates what can change,
a full request stream refuses new work instead of evicting accepted work, a restricted process
creates nothing and waits for the dispatcher's buckets."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js import api
from nats.js.errors import NotFoundError

from dispatcher.bus.bus_settings import BusSettings
from dispatcher.bus.connection import publish_durably
from dispatcher.bus.subjects import Subjects
from dispatcher.bus.topology import (
    ensure_bucket,
    ensure_consumer,
    ensure_model_consumers,
    ensure_streams,
    request_stream_config,
)
from dispatcher.errors import QueueFull
from modelbus.embedded_nats import NatsServer
from schemas.config import ModelbusConfig, ModelConfig, VersionConfig
from schemas.envelope import Lane
from tests.support.servers import small_streams


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[NATS]:
    connection = await nats.connect(nats_server.url)
    yield connection
    await connection.close()


def _settings(nats_server: NatsServer, subjects: Subjects, **overrides: object) -> BusSettings:
    return BusSettings(
        nats_url=nats_server.url, namespace=subjects.namespace, **{**small_streams(), **overrides}
    )


def _subjects() -> Subjects:
    return Subjects("o" + uuid.uuid4().hex[:10])


async def test_creating_twice_is_harmless_and_a_changed_limit_is_applied(
    nats_server: NatsServer, nc: NATS
) -> None:
    js, subjects = nc.jetstream(), _subjects()
    settings = _settings(nats_server, subjects)
    await ensure_streams(js, subjects, settings, nc.max_payload, msg_ttl=True)
    await js.publish(subjects.request("m"), b"kept")
    await ensure_streams(js, subjects, settings, nc.max_payload, msg_ttl=True)
    bigger = _settings(nats_server, subjects, request_stream_max_msgs=777)
    await ensure_streams(js, subjects, bigger, nc.max_payload, msg_ttl=True)
    info = await js.stream_info(subjects.request_stream)
    assert info.state.messages == 1  # nothing recreated, nothing lost
    assert info.config.max_msgs == 777
    assert info.config.retention == api.RetentionPolicy.WORK_QUEUE
    assert info.config.discard == api.DiscardPolicy.NEW


async def test_a_full_request_stream_refuses_new_requests_and_keeps_the_old(
    nats_server: NatsServer, nc: NATS
) -> None:
    js, subjects = nc.jetstream(), _subjects()
    await ensure_streams(
        js, subjects, _settings(nats_server, subjects, request_stream_max_msgs=2), 1 << 20, True
    )
    for n in range(2):
        await js.publish(subjects.request("m"), f"accepted {n}".encode())
    with pytest.raises(QueueFull):
        await publish_durably(js, subjects.request("m"), b"one too many", {"Nats-Msg-Id": "x"}, 1.0)
    first = await js.get_msg(subjects.request_stream, 1)
    assert first.data == b"accepted 0"


async def test_an_unchangeable_setting_keeps_the_existing_stream(
    nats_server: NatsServer, nc: NATS, caplog: pytest.LogCaptureFixture
) -> None:
    js, subjects = nc.jetstream(), _subjects()
    settings = _settings(nats_server, subjects)
    # Created earlier by someone else with memory storage, which cannot change in place.
    config = request_stream_config(subjects, settings, nc.max_payload, msg_ttl=False)
    config.storage = api.StorageType.MEMORY
    await js.add_stream(config)
    with caplog.at_level(logging.WARNING, logger="dispatcher.bus.topology"):
        await ensure_streams(js, subjects, settings, nc.max_payload, msg_ttl=True)
    info = await js.stream_info(subjects.request_stream)
    assert info.config.storage == api.StorageType.MEMORY
    assert any("kept its existing configuration" in r.getMessage() for r in caplog.records)


async def test_a_consumer_is_shared_per_model_version_and_lane_and_updated_in_place(
    nats_server: NatsServer, nc: NATS
) -> None:
    js, subjects = nc.jetstream(), _subjects()
    settings = _settings(nats_server, subjects)
    await ensure_streams(js, subjects, settings, nc.max_payload, msg_ttl=True)
    name = await ensure_consumer(js, subjects, settings, "m", "v2", Lane.BATCH)
    assert name == await ensure_consumer(js, subjects, settings, "m", "v2", Lane.BATCH)
    info = await js.consumer_info(subjects.request_stream, name)
    assert info.config.filter_subject == subjects.request("m", "v2", Lane.BATCH)
    assert info.config.ack_policy == api.AckPolicy.EXPLICIT
    slower = _settings(nats_server, subjects, ack_wait_s=42, max_deliver=7)
    await ensure_consumer(js, subjects, slower, "m", "v2", Lane.BATCH)
    info = await js.consumer_info(subjects.request_stream, name)
    assert (info.config.ack_wait, info.config.max_deliver) == (42, 7)


async def test_every_lane_of_every_version_gets_its_consumer(nats_server: NatsServer, nc: NATS) -> None:
    js, subjects = nc.jetstream(), _subjects()
    settings = _settings(nats_server, subjects)
    await ensure_streams(js, subjects, settings, nc.max_payload, msg_ttl=True)
    config = ModelbusConfig(
        models=[
            ModelConfig(name="a"),
            ModelConfig(name="b", versions=[VersionConfig(name="v1"), VersionConfig(name="v2")]),
        ]
    )
    await ensure_model_consumers(js, subjects, settings, config)
    names = {info.name for info in await js.consumers_info(subjects.request_stream)}
    expected = {
        subjects.consumer(model, version, lane)
        for model, version in (("a", "default"), ("b", "v1"), ("b", "v2"))
        for lane in Lane
    }
    assert names == expected


async def test_a_restricted_process_creates_nothing(nats_server: NatsServer, nc: NATS) -> None:
    js, subjects = nc.jetstream(), _subjects()
    settings = _settings(nats_server, subjects, manage_topology=False, connect_wait_s=0)
    await ensure_streams(js, subjects, settings, nc.max_payload, msg_ttl=True)
    await ensure_model_consumers(js, subjects, settings, ModelbusConfig(models=[ModelConfig(name="a")]))
    with pytest.raises(NotFoundError):
        await js.stream_info(subjects.request_stream)
    with pytest.raises(NotFoundError):
        await ensure_bucket(js, settings, subjects.key_bucket, "keys")  # waited 0 s for it


async def test_a_restricted_process_waits_for_the_dispatchers_bucket(
    nats_server: NatsServer, nc: NATS
) -> None:
    js, subjects = nc.jetstream(), _subjects()
    waiting = asyncio.ensure_future(
        ensure_bucket(js, _settings(nats_server, subjects, manage_topology=False), subjects.key_bucket, "k")
    )
    await asyncio.sleep(0.1)
    assert not waiting.done()
    await ensure_bucket(js, _settings(nats_server, subjects), subjects.key_bucket, "k", history=3)
    kv = await asyncio.wait_for(waiting, 5)
    status = await kv.status()
    assert status.bucket == subjects.key_bucket and status.history == 3
