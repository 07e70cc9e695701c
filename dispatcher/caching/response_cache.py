"""An exact-match response cache in NATS KV, for serving an answer when a model cannot.

The key is a digest of the model and the request body without the fields that do not change the
answer's meaning (`stream`, `stream_options`, `user`); entries expire with the bucket's TTL. Only
plain (non-streaming) answers of models with `cache: true` are kept.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import orjson
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from dispatcher.bus.bus_settings import BusSettings
from dispatcher.bus.subjects import Subjects
from dispatcher.bus.topology import ensure_bucket

log = logging.getLogger(__name__)
_IGNORED = ("stream", "stream_options", "user")


def cache_key(model: str, payload: dict[str, Any]) -> str:
    meaningful = {k: v for k, v in payload.items() if k not in _IGNORED}
    meaningful["model"] = model
    return hashlib.sha256(orjson.dumps(meaningful, option=orjson.OPT_SORT_KEYS)).hexdigest()


class ResponseCache:
    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv
        self.hits = 0

    @classmethod
    async def open(cls, js: JetStreamContext, subjects: Subjects, settings: BusSettings) -> ResponseCache:
        description = "Modelbus exact-match answers for degradation"
        return cls(
            await ensure_bucket(js, settings, subjects.cache_bucket, description, ttl_s=settings.cache_ttl_s)
        )

    async def get(self, model: str, payload: dict[str, Any]) -> bytes | None:
        try:
            entry = await self._kv.get(cache_key(model, payload))
        except KeyNotFoundError:
            return None
        if entry.value:
            self.hits += 1
        return entry.value or None

    async def put(self, model: str, payload: dict[str, Any], body: bytes) -> None:
        try:
            await self._kv.put(cache_key(model, payload), body)
        except Exception as exc:  # noqa: BLE001 - a cache that misses a write is still correct
            log.warning("answer not cached: %s", exc)
