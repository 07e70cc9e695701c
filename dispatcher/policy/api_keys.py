"""Run-time API keys in a KV bucket: created and revoked by any admin, seen by every ingress at once.

Keys are long random strings, so a fast hash is enough (there is nothing to brute-force, unlike a
password). Ingresses look keys up by digest: an attacker controls the key but not its digest, so the
timing of the lookup reveals nothing about stored keys. The bucket keeps only digests.

Revocation keeps the record (with `revoked_at`) so `keys list` can still show it and a key id is never
reused; ingresses watch the bucket and drop a revoked key as soon as the update arrives (milliseconds).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError
from nats.js.kv import KeyValue
from pydantic import ValidationError

from dispatcher.bus.bus_settings import BusSettings
from dispatcher.bus.kv_watch import watch_bucket
from dispatcher.bus.subjects import Subjects, encode_token
from dispatcher.bus.topology import ensure_bucket
from dispatcher.errors import KeyExists, KeyNotFound
from schemas.config import ModelbusConfig
from schemas.keys import ApiKeyRecord

log = logging.getLogger(__name__)

KEY_PREFIX = "mb-"


def hash_key(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def config_key_ids(config: ModelbusConfig) -> set[str]:
    """Ids of the keys the configuration file defines (they are revoked by editing the file)."""
    return {key.id for consumer in config.consumers for key in consumer.keys}


def config_key_active(config: ModelbusConfig, key_id: str) -> bool | None:
    """Whether the configuration's key `key_id` is unexpired; None if the configuration has no such key."""
    for consumer in config.consumers:
        for key in consumer.keys:
            if key.id == key_id:
                return key.expires_at is None or aware(key.expires_at) > datetime.now(UTC)
    return None


def aware(moment: datetime) -> datetime:
    """Config files may give naive timestamps; they mean UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class KeyRegistry:
    def __init__(self, js: JetStreamContext, kv: KeyValue, bucket: str) -> None:
        self._js = js
        self._kv = kv
        self._bucket = bucket

    @classmethod
    async def open(cls, js: JetStreamContext, subjects: Subjects, settings: BusSettings) -> KeyRegistry:
        kv = await ensure_bucket(js, settings, subjects.key_bucket, "Modelbus API keys (hashes only)")
        return cls(js, kv, subjects.key_bucket)

    async def create(
        self,
        consumer: str,
        key_id: str | None,
        expires_in: timedelta | None,
        description: str,
        *,
        config: ModelbusConfig,
    ) -> tuple[ApiKeyRecord, str]:
        """A new key for `consumer`: its record and the key itself, which nothing keeps.

        Key ids are unique across the configuration's keys and issued ones (KeyExists otherwise):
        audit rows and `keys revoke` name keys by id, so an id must mean one key."""
        if key_id is not None and key_id in config_key_ids(config):
            raise KeyExists(key_id)
        key = new_key()
        now = datetime.now(UTC)
        record = ApiKeyRecord(
            id=key_id or "k-" + secrets.token_hex(6),
            consumer=consumer,
            hash=hash_key(key),
            created_at=now,
            expires_at=now + expires_in if expires_in is not None else None,
            description=description,
        )
        try:
            await self._kv.create(encode_token(record.id), record.model_dump_json().encode())
        except KeyWrongLastSequenceError:
            raise KeyExists(record.id) from None
        return record, key

    async def get(self, key_id: str) -> ApiKeyRecord | None:
        try:
            entry = await self._kv.get(encode_token(key_id))
        except KeyNotFoundError:
            return None
        return ApiKeyRecord.model_validate_json(entry.value) if entry.value else None

    async def revoke(self, key_id: str) -> ApiKeyRecord:
        """Mark a key revoked (idempotent); compare-and-set so a concurrent change is not lost."""
        while True:
            try:
                entry = await self._kv.get(encode_token(key_id))
            except KeyNotFoundError:
                raise KeyNotFound(key_id) from None
            assert entry.value is not None and entry.revision is not None
            record = ApiKeyRecord.model_validate_json(entry.value)
            if record.revoked_at is not None:
                return record
            record = record.model_copy(update={"revoked_at": datetime.now(UTC)})
            try:
                await self._kv.update(encode_token(key_id), record.model_dump_json().encode(), entry.revision)
                return record
            except KeyWrongLastSequenceError:
                continue

    async def list(self) -> list[ApiKeyRecord]:
        try:
            names = await self._kv.keys()
        except NoKeysError:  # an empty bucket
            return []
        records = []
        for name in names:
            try:
                entry = await self._kv.get(name)
            except KeyNotFoundError:
                continue
            if entry.value:
                records.append(ApiKeyRecord.model_validate_json(entry.value))
        return sorted(records, key=lambda r: r.created_at)

    async def follow(self, on_change: Callable[[dict[str, ApiKeyRecord]], Awaitable[None] | None]) -> None:
        """Call `on_change` with all records by hash, first once everything present is read, then on
        every change. Runs until cancelled or the watch is lost (under a Supervisor, which starts it
        again from a full read); an unreadable record is skipped and logged, never fatal."""
        records: dict[str, ApiKeyRecord] = {}
        initial = True
        async for entry in watch_bucket(self._js, self._kv, self._bucket):
            if entry is None:  # end of the initial values
                initial = False
            elif entry.operation in ("DEL", "PURGE") or not entry.value:
                records.pop(entry.key, None)
            else:
                try:
                    records[entry.key] = ApiKeyRecord.model_validate_json(entry.value)
                except ValidationError:
                    log.error("unreadable key record %s skipped", entry.key)
                    continue
            if initial:
                continue
            result = on_change({r.hash: r for r in records.values()})
            if asyncio.iscoroutine(result):
                await result
