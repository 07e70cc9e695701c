"""API keys: stored as hashes, looked up by hash, refused once expired or revoked."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from dispatcher.policy.api_keys import hash_key, new_key
from ingress.key_lookup import KeyRing
from schemas.config import ApiKey, ConsumerConfig, ModelbusConfig
from schemas.keys import ApiKeyRecord


def test_new_keys_are_random_and_prefixed() -> None:
    keys = {new_key() for _ in range(100)}
    assert len(keys) == 100
    assert all(k.startswith("mb-") and len(k) > 40 for k in keys)


def test_config_keys_identify_by_hash_only_and_expire() -> None:
    key, old = new_key(), new_key()
    past = datetime.now(UTC) - timedelta(seconds=1)
    config = ModelbusConfig(
        consumers=[
            ConsumerConfig(
                name="team",
                keys=[
                    ApiKey(id="k1", hash=hash_key(key)),
                    ApiKey(id="k0", hash=hash_key(old), expires_at=past),
                ],
            )
        ]
    )
    ring = KeyRing(config)
    assert ring.identify(key) == ("team", "k1")
    assert ring.identify(key + "x") is None
    assert ring.identify(hash_key(key)) is None  # knowing the stored hash is not enough
    assert ring.identify(old) is None  # expired
    assert key not in repr(config)


def test_issued_keys_follow_their_records() -> None:
    key = new_key()
    now = datetime.now(UTC)
    record = ApiKeyRecord(id="i1", consumer="team", hash=hash_key(key), created_at=now)
    ring = KeyRing(ModelbusConfig())
    assert ring.identify(key) is None
    ring.replace_issued({record.hash: record})
    assert ring.identify(key) == ("team", "i1")
    revoked = record.model_copy(update={"revoked_at": now})
    ring.replace_issued({record.hash: revoked})
    assert ring.identify(key) is None
    expired = record.model_copy(update={"expires_at": now - timedelta(seconds=1)})
    ring.replace_issued({record.hash: expired})
    assert ring.identify(key) is None
