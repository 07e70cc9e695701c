"""Bearer API-key authentication. Keys are known only by their SHA-256; the key itself is never kept.

API keys are long random strings, so a fast hash is enough (there is nothing to brute-force, unlike
a password). Lookup is by digest: an attacker controls the key but not its digest, so the timing
of the lookup reveals nothing about stored keys; the final comparison is constant-time anyway.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from ingress.errors import APIError
from schemas.config import ModelbusConfig
from schemas.envelope import Lane

KEY_PREFIX = "mb-"


@dataclass(frozen=True, slots=True)
class Identity:
    consumer: str
    key_id: str
    key_hash: str
    admin: bool = False
    lane: Lane = Lane.INTERACTIVE


def hash_key(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


class KeyStore:
    def __init__(self, config: ModelbusConfig) -> None:
        self._by_hash: dict[str, Identity] = {
            key.hash: Identity(consumer.name, key.id, key.hash, consumer.admin, consumer.lane)
            for consumer in config.consumers
            for key in consumer.keys
        }

    def identify(self, key: str) -> Identity | None:
        digest = hash_key(key)
        identity = self._by_hash.get(digest)
        if identity is None or not hmac.compare_digest(identity.key_hash, digest):
            return None
        return identity


_UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}


async def authenticate(request: Request) -> Identity:
    """FastAPI dependency: the caller's identity, or 401 in OpenAI's shape."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise APIError(
            401,
            "missing API key: send 'Authorization: Bearer <key>'",
            "missing_api_key",
            headers=_UNAUTHORIZED,
        )
    keys: KeyStore = request.app.state.live.keys
    identity = keys.identify(token.strip())
    if identity is None:
        # Never echo the key back, not even in part.
        raise APIError(401, "invalid API key", "invalid_api_key", headers=_UNAUTHORIZED)
    return identity


Caller = Annotated[Identity, Depends(authenticate)]


async def require_admin(identity: Caller) -> Identity:
    """FastAPI dependency for the admin API: 403 unless the consumer is an administrator."""
    if not identity.admin:
        raise APIError(403, "this key may not use the admin API", "permission_denied")
    return identity


Admin = Annotated[Identity, Depends(require_admin)]
