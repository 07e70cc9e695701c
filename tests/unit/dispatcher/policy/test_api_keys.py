"""dispatcher/policy/api_keys.py on a real nats-server's KV bucket: only digests are stored, the key never
appears in a record, its repr or the logs, ids are never reused, revocation keeps the record and
reaches watchers."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from datetime import UTC, datetime, timedelta

import pytest

from dispatcher.policy.api_keys import (
    KEY_PREFIX,
    KeyExists,
    KeyNotFound,
    KeyRegistry,
    config_key_active,
    hash_key,
)
from schemas.config import ApiKey, ConsumerConfig, ModelbusConfig
from schemas.keys import ApiKeyRecord, ApiKeyView
from tests.unit.conftest import Bus, stop_task

CONFIG = ModelbusConfig(
    consumers=[
        ConsumerConfig(
            name="c",
            keys=[
                ApiKey(id="from-file", hash=hash_key("mb-file")),
                ApiKey(id="old", hash=hash_key("mb-old"), expires_at=datetime(2020, 1, 1)),  # naive: UTC
                ApiKey(id="later", hash=hash_key("mb-later"), expires_at=datetime(2999, 1, 1, tzinfo=UTC)),
            ],
        )
    ]
)


@pytest.fixture
async def registry(bus: Bus) -> KeyRegistry:
    return await KeyRegistry.open(bus.js, bus.subjects, bus.settings)


async def _bucket_bytes(bus: Bus) -> bytes:
    """Everything the key bucket's stream holds, history included."""
    stream = f"KV_{bus.subjects.key_bucket}"
    info = await bus.js.stream_info(stream)
    out = b""
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await bus.js.get_msg(stream, seq)
        out += (msg.data or b"") + repr(msg.headers).encode()
    return out


def test_the_digest_is_sha256_of_the_key() -> None:
    assert hash_key("mb-abc") == "sha256:" + hashlib.sha256(b"mb-abc").hexdigest()
    assert hash_key("mb-abc") != hash_key("mb-abd")


async def test_the_key_itself_is_never_stored_shown_or_logged(
    bus: Bus, registry: KeyRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        record, key = await registry.create("c", "k1", timedelta(days=1), "ci", config=CONFIG)
        await registry.revoke("k1")
        listed = await registry.list()
    assert key.startswith(KEY_PREFIX) and len(key) > 40
    assert record.hash == hash_key(key)
    bucket = await _bucket_bytes(bus)
    assert record.hash.encode() in bucket and key.encode() not in bucket
    for shown in (repr(record), str(record), record.model_dump_json(), repr(listed), ApiKeyView.of(record)):
        assert key not in str(shown)
    assert "hash" not in ApiKeyView.model_fields  # what the admin API shows has no digest either
    assert all(key not in r.getMessage() for r in caplog.records)


async def test_key_ids_are_never_reused(registry: KeyRegistry) -> None:
    await registry.create("c", "k1", None, "", config=CONFIG)
    with pytest.raises(KeyExists):
        await registry.create("c", "k1", None, "", config=CONFIG)
    await registry.revoke("k1")
    with pytest.raises(KeyExists):  # not even after revocation
        await registry.create("d", "k1", None, "", config=CONFIG)
    with pytest.raises(KeyExists):  # nor an id the configuration file uses
        await registry.create("c", "from-file", None, "", config=CONFIG)


async def test_generated_ids_and_keys_differ(registry: KeyRegistry) -> None:
    (one, key_one), (two, key_two) = [await registry.create("c", None, None, "", config=CONFIG) for _ in "ab"]
    assert one.id != two.id and key_one != key_two and one.hash != two.hash


async def test_revocation_keeps_the_record_and_is_idempotent(registry: KeyRegistry) -> None:
    created, _ = await registry.create("c", "k1", timedelta(hours=1), "note", config=CONFIG)
    revoked = await registry.revoke("k1")
    assert revoked.revoked_at is not None and revoked.status() == "revoked"
    again = await registry.revoke("k1")
    assert again.revoked_at == revoked.revoked_at  # the first revocation time stands
    kept = await registry.get("k1")
    assert kept is not None and kept.model_copy(update={"revoked_at": None}) == created
    with pytest.raises(KeyNotFound):
        await registry.revoke("nope")
    assert await registry.get("nope") is None


async def test_list_is_in_creation_order_and_empty_when_nothing_was_issued(registry: KeyRegistry) -> None:
    assert await registry.list() == []
    for key_id in ("b", "a", "c"):
        await registry.create("c", key_id, None, "", config=CONFIG)
    assert [r.id for r in await registry.list()] == ["b", "a", "c"]


async def test_watchers_see_every_key_by_digest_and_revocations_at_once(
    bus: Bus, registry: KeyRegistry
) -> None:
    seen: asyncio.Queue[dict[str, ApiKeyRecord]] = asyncio.Queue()
    first, first_key = await registry.create("c", "k1", None, "", config=CONFIG)
    kv = await bus.js.key_value(bus.subjects.key_bucket)
    await kv.put("junk", b"not a record")  # skipped, never fatal
    following = asyncio.ensure_future(registry.follow(seen.put_nowait))
    try:
        initial = await asyncio.wait_for(seen.get(), 5)
        assert set(initial) == {hash_key(first_key)}
        second, second_key = await registry.create("c", "k2", None, "", config=CONFIG)
        assert set(await asyncio.wait_for(seen.get(), 5)) == {hash_key(first_key), hash_key(second_key)}
        await registry.revoke("k1")
        latest = await asyncio.wait_for(seen.get(), 5)
        assert latest[first.hash].revoked_at is not None and latest[second.hash].revoked_at is None
    finally:
        await stop_task(following)


def test_config_keys_are_active_until_they_expire() -> None:
    assert config_key_active(CONFIG, "from-file") is True
    assert config_key_active(CONFIG, "later") is True
    assert config_key_active(CONFIG, "old") is False  # a naive timestamp is read as UTC
    assert config_key_active(CONFIG, "unknown") is None
