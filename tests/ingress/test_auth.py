"""API keys: stored as hashes, looked up by hash, never kept in plain text."""

from __future__ import annotations

from ingress.auth import KeyStore, hash_key, new_key
from schemas.config import ApiKey, ConsumerConfig, ModelbusConfig


def test_new_keys_are_random_and_prefixed() -> None:
    keys = {new_key() for _ in range(100)}
    assert len(keys) == 100
    assert all(k.startswith("mb-") and len(k) > 40 for k in keys)


def test_key_store_identifies_by_hash_only() -> None:
    key = new_key()
    config = ModelbusConfig(
        consumers=[ConsumerConfig(name="team", keys=[ApiKey(id="k1", hash=hash_key(key))])]
    )
    store = KeyStore(config)
    identity = store.identify(key)
    assert identity is not None and (identity.consumer, identity.key_id) == ("team", "k1")
    assert store.identify(key + "x") is None
    assert store.identify(hash_key(key)) is None  # knowing the stored hash is not enough
    assert key not in repr(config)
