"""Generated NATS permissions against a real nats-server: each component reaches only its subjects."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import orjson
import pytest
from nats.aio.client import Client as NATS

from dispatcher.bus.bus_settings import BusSettings
from dispatcher.bus.connection import auth_options
from dispatcher.bus.dead_letters import DeadLetterer
from dispatcher.bus.nats_permissions import NatsUser, hash_password, ingress, render_server_config
from dispatcher.bus.reply_stream import decode_frame
from dispatcher.bus.subjects import Subjects
from dispatcher.bus.topology import ensure_affinity_consumers, ensure_consumer, ensure_streams
from schemas.envelope import Endpoint, ErrorCode, ErrorFrame, Lane, RequestEnvelope
from tests.support.secure_nats import SecureNats, start_secure_nats
from tests.support.servers import small_streams

NS = "perm"


@pytest.fixture
def secure(tmp_path: Path) -> Iterator[SecureNats]:
    started = start_secure_nats(
        tmp_path,
        NS,
        ["i1", "i2"],
        {"wa": {"model-a": ["default"]}, "wb": {"model-b": ["default"]}},
        buckets={"model-a": 2},
    )
    yield started
    started.server.stop()


def _settings(secure: SecureNats, user: str) -> BusSettings:
    variables = {k.removeprefix("MODELBUS_").lower(): v for k, v in secure.env(user).items()}
    return BusSettings(nats_url=secure.server.url, **variables, **small_streams())  # type: ignore[arg-type]


class Client:
    """A connection as one generated user that records the permission errors the server sends."""

    def __init__(self, nc: NATS, errors: list[str]) -> None:
        self.nc, self.errors = nc, errors

    async def violation(self, fragment: str) -> str:
        """The server's error text (nats-py lower-cases it) naming `fragment`."""
        await self.nc.flush()
        for _ in range(40):
            found = [e for e in self.errors if fragment in e]
            if found:
                return found[0]
            await asyncio.sleep(0.05)
        raise AssertionError(f"no permissions violation with {fragment!r}; got {self.errors}")


async def _connect(secure: SecureNats, user: str) -> Client:
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    options = auth_options(_settings(secure, user))
    nc = await nats.connect(secure.server.url, error_cb=on_error, allow_reconnect=False, **options)  # type: ignore[arg-type]
    return Client(nc, errors)


@pytest.fixture
async def topology(secure: SecureNats) -> AsyncIterator[Client]:
    """Streams and both models' consumers, created by the admin user; one request for each model."""
    admin = await _connect(secure, f"{NS}-admin")
    settings = _settings(secure, f"{NS}-admin")
    js = admin.nc.jetstream()
    await ensure_streams(js, Subjects(NS), settings, admin.nc.max_payload, msg_ttl=True)
    for model in ("model-a", "model-b"):
        await ensure_consumer(js, Subjects(NS), settings, model)
    sender = await _connect(secure, f"{NS}-ingress-i1")
    for model in ("model-a", "model-b"):
        await sender.nc.jetstream().publish(Subjects(NS).request(model), b"{}")
    await sender.nc.close()
    yield admin
    await admin.nc.close()


async def test_worker_cannot_subscribe_to_another_models_requests(
    topology: Client, secure: SecureNats
) -> None:
    worker = await _connect(secure, f"{NS}-worker-wa")
    await worker.nc.subscribe(Subjects(NS).request("model-b"))
    error = await worker.violation("subscription")
    assert Subjects(NS).request("model-b") in error
    await worker.nc.close()


@pytest.mark.parametrize("subject", [f"{NS}.reply.>", f"{NS}.reply.i1.*", f"{NS}.req.>", ">"])
async def test_worker_cannot_subscribe_to_replies_or_all_requests(
    topology: Client, secure: SecureNats, subject: str
) -> None:
    worker = await _connect(secure, f"{NS}-worker-wa")
    await worker.nc.subscribe(subject)
    assert subject in await worker.violation("subscription")
    await worker.nc.close()


async def test_worker_cannot_pull_from_another_models_consumer(topology: Client, secure: SecureNats) -> None:
    subjects = Subjects(NS)
    worker = await _connect(secure, f"{NS}-worker-wa")
    inbox = worker.nc.new_inbox()
    received: list[bytes] = []

    async def on_msg(msg: nats.aio.msg.Msg) -> None:
        received.append(msg.data)

    await worker.nc.subscribe(f"{inbox}.*", cb=on_msg)
    next_b = f"$JS.API.CONSUMER.MSG.NEXT.{subjects.request_stream}.{subjects.consumer('model-b')}"
    await worker.nc.publish(next_b, b'{"batch": 1, "no_wait": true}', reply=f"{inbox}.1")
    assert next_b.lower() in await worker.violation("publish")
    await asyncio.sleep(0.3)
    assert received == []
    info = await topology.nc.jetstream().consumer_info(subjects.request_stream, subjects.consumer("model-b"))
    assert info.num_pending == 1 and info.num_ack_pending == 0  # model B's request was not touched
    await worker.nc.close()


async def test_worker_pulls_and_acks_its_own_model(topology: Client, secure: SecureNats) -> None:
    subjects = Subjects(NS)
    worker = await _connect(secure, f"{NS}-worker-wa")
    sub = await worker.nc.jetstream().pull_subscribe_bind(
        subjects.consumer("model-a"), subjects.request_stream
    )
    [msg] = await sub.fetch(1, timeout=5)
    await msg.ack_sync()
    info = await topology.nc.jetstream().consumer_info(subjects.request_stream, subjects.consumer("model-a"))
    assert info.num_pending == 0 and info.num_ack_pending == 0
    assert worker.errors == []
    await worker.nc.close()


async def test_worker_cannot_use_the_default_inbox(topology: Client, secure: SecureNats) -> None:
    worker = await _connect(secure, f"{NS}-worker-wa")
    await worker.nc.subscribe("_INBOX.>")
    assert "_inbox.>" in await worker.violation("subscription")
    await worker.nc.close()


async def test_ingress_cannot_read_another_ingress_replies(topology: Client, secure: SecureNats) -> None:
    subjects = Subjects(NS)
    first = await _connect(secure, f"{NS}-ingress-i1")
    await first.nc.subscribe(subjects.reply_inbox("i1"))
    await first.nc.subscribe(subjects.reply_inbox("i2"))
    assert subjects.reply_inbox("i2") in await first.violation("subscription")
    assert all(subjects.reply_inbox("i1") not in e for e in first.errors)
    await first.nc.close()


async def test_ingress_cannot_pull_requests(topology: Client, secure: SecureNats) -> None:
    subjects = Subjects(NS)
    first = await _connect(secure, f"{NS}-ingress-i1")
    next_a = (
        f"$JS.API.CONSUMER.MSG.NEXT.{subjects.request_stream}.{subjects.consumer('model-a', lane=Lane.BATCH)}"
    )
    await first.nc.publish(next_a, b'{"batch": 1}', reply=first.nc.new_inbox())
    assert next_a.lower() in await first.violation("publish")
    await first.nc.close()


def test_server_config_holds_hashes_not_passwords() -> None:
    hashed = hash_password("s3cret-value")
    text = render_server_config([NatsUser("mb-ingress-x", ingress("mb", "x"), hashed)])
    assert hashed in text and "s3cret-value" not in text
    assert '"mb.reply.x.*"' in text  # its own replies only
    with pytest.raises(ValueError):
        render_server_config([NatsUser("u", ingress("mb", "x"), "plain")])


async def test_dispatcher_user_dead_letters_and_tells_the_ingress(secure: SecureNats) -> None:
    """The dispatcher's grant covers the advisory, the stream message calls and the reply frame."""
    subjects = Subjects(NS)
    settings = _settings(secure, f"{NS}-dispatcher").model_copy(update={"ack_wait_s": 0.5, "max_deliver": 2})
    dispatcher = await _connect(secure, f"{NS}-dispatcher")
    js = dispatcher.nc.jetstream()
    await ensure_streams(js, subjects, settings, dispatcher.nc.max_payload, msg_ttl=True)
    consumer = await ensure_consumer(js, subjects, settings, "model-a")
    await DeadLetterer(dispatcher.nc, subjects).start()

    front = await _connect(secure, f"{NS}-ingress-i1")
    replies: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_reply(msg: nats.aio.msg.Msg) -> None:
        await replies.put(msg.data)

    await front.nc.subscribe(subjects.reply_inbox("i1"), cb=on_reply)
    now = int(time.time() * 1000)
    envelope = RequestEnvelope(
        id="req-1",
        endpoint=Endpoint.CHAT,
        model="model-a",
        target="model-a",
        consumer="c",
        created_ms=now,
        deadline_ms=now + 60_000,
        reply_to=subjects.reply("i1", "req-1"),
        quota=None,
        output_guard=None,
        payload={"model": "model-a"},
    )
    await front.nc.jetstream().publish(subjects.request("model-a"), envelope.model_dump_json().encode())

    worker = await _connect(secure, f"{NS}-worker-wa")
    sub = await worker.nc.jetstream().pull_subscribe_bind(consumer, subjects.request_stream)
    for _ in range(2):
        await sub.fetch(1, timeout=5)  # taken and never acked, twice
    with pytest.raises(nats.errors.TimeoutError):
        await sub.fetch(1, timeout=2)

    frame, _ = decode_frame(await asyncio.wait_for(replies.get(), 10))
    assert isinstance(frame, ErrorFrame) and frame.code is ErrorCode.DEAD_LETTERED
    dead = await js.get_last_msg(subjects.dead_letter_stream, subjects.dead_letter("model-a"))
    assert orjson.loads(dead.data)["id"] == "req-1"
    assert dispatcher.errors == front.errors == worker.errors == []
    for client in (dispatcher, front, worker):
        await client.nc.close()


async def test_worker_pulls_its_models_affinity_buckets_and_hears_their_bells(secure: SecureNats) -> None:
    subjects = Subjects(NS)
    admin = await _connect(secure, f"{NS}-admin")
    js = admin.nc.jetstream()
    await ensure_streams(js, subjects, _settings(secure, f"{NS}-admin"), admin.nc.max_payload, msg_ttl=True)
    await ensure_affinity_consumers(js, subjects, _settings(secure, f"{NS}-admin"), "model-a", "default", 2)
    sender = await _connect(secure, f"{NS}-ingress-i1")
    worker = await _connect(secure, f"{NS}-worker-wa")
    bells: asyncio.Queue[str] = asyncio.Queue()

    async def on_bell(msg: object) -> None:
        bells.put_nowait(msg.subject)

    await worker.nc.subscribe(subjects.affinity_bells("model-a", "default"), cb=on_bell)
    await worker.nc.flush()
    await sender.nc.jetstream().publish(subjects.affinity_request("model-a", "default", 1), b"{}")
    await sender.nc.publish(subjects.affinity_bell("model-a", "default", 1), b"")
    assert await asyncio.wait_for(bells.get(), 5) == subjects.affinity_bell("model-a", "default", 1)
    sub = await worker.nc.jetstream().pull_subscribe_bind(
        subjects.affinity_consumer("model-a", "default", 1), subjects.request_stream
    )
    [msg] = await sub.fetch(1, timeout=5)
    await msg.ack_sync()
    assert worker.errors == [] and sender.errors == []
    other = await _connect(secure, f"{NS}-worker-wb")  # no affinity grants for another model's worker
    await other.nc.subscribe(subjects.affinity_bells("model-a", "default"))
    assert "subscription" in await other.violation("subscription")
    for client in (worker, other, sender, admin):
        await client.nc.close()
