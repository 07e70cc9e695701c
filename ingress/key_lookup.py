"""Which consumer an API key belongs to: keys from the config file and keys issued at run time."""

from __future__ import annotations

import hmac
from datetime import UTC, datetime

from dispatcher.policy.api_keys import aware, hash_key
from schemas.config import ModelbusConfig
from schemas.keys import ApiKeyRecord


class KeyRing:
    """Static keys come with each config revision (`swap_config`); issued keys arrive from the key
    bucket's watch (`replace_issued`). Both swaps replace whole dicts, so a lookup never sees half."""

    def __init__(self, config: ModelbusConfig) -> None:
        self._static: dict[str, tuple[str, str, datetime | None]] = {}
        self._issued: dict[str, ApiKeyRecord] = {}
        self.swap_config(config)

    def swap_config(self, config: ModelbusConfig) -> None:
        self._static = {
            key.hash: (consumer.name, key.id, key.expires_at)
            for consumer in config.consumers
            for key in consumer.keys
        }

    def replace_issued(self, by_hash: dict[str, ApiKeyRecord]) -> None:
        self._issued = by_hash

    def identify(self, key: str) -> tuple[str, str] | None:
        """(consumer, key id) of a valid key; None for an unknown, expired or revoked one."""
        digest = hash_key(key)
        now = datetime.now(UTC)
        static = self._static.get(digest)
        if static is not None:
            consumer, key_id, expires_at = static
            if expires_at is not None and aware(expires_at) <= now:
                return None
            return consumer, key_id
        issued = self._issued.get(digest)
        # The dict lookup already matched the digest; the constant-time compare is belt and braces.
        if issued is None or not hmac.compare_digest(issued.hash, digest) or issued.status(now) != "active":
            return None
        return issued.consumer, issued.id
