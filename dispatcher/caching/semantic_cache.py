"""The semantic cache: answers to earlier requests that meant the same, shared by every ingress.

Entries live in the KV bucket `<ns>-semcache` (one per answered prompt: partition, vector, expiry,
the answering request's id, the prompt's last user turn, the answer). Every ingress keeps all live vectors in an in-memory index
fed by a watch on the bucket, so a lookup costs one embedding call through the bus plus a matrix
product in memory; a hit costs one KV read for the answer. An answer stored by one ingress is found
by the others as soon as the watch delivers it (milliseconds). Why not Postgres with a vector index:
docs/traffic.md.

A prompt is embedded by an embeddings model of the configuration, asked through the bus like any
model (consumer `modelbus-cache`). A lookup whose embedding does not arrive within the model's
`timeout_ms` is a miss: the cache is an aid, never a reason to fail or hold up a request.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
from dataclasses import dataclass

import numpy as np
import orjson
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from dispatcher.admission.admitted import CACHE_CONSUMER, Admitted
from dispatcher.admission.live_config import LiveConfig
from dispatcher.bus.bus_settings import BusSettings
from dispatcher.bus.client import BusClient
from dispatcher.bus.internal_calls import ask
from dispatcher.bus.kv_watch import watch_bucket
from dispatcher.bus.subjects import Subjects
from dispatcher.bus.topology import ensure_bucket
from dispatcher.caching.semantic_keys import Probe, conflict, probe_for
from dispatcher.caching.vector_index import Vector, VectorIndex, unit
from dispatcher.telemetry import metrics
from dispatcher.telemetry.labels import sanitize
from schemas.envelope import Endpoint

log = logging.getLogger(__name__)

# Storing happens after the answer has left: the embedding may take its time there.
_STORE_TIMEOUT_S = 10.0
_MAX_TEXT = 8000  # characters embedded; far beyond what a small embedding model reads anyway
_EXPIRE_EVERY_S = 60.0
# The nearest entries above the threshold tried in turn: the best may fail the pairwise check.
_CANDIDATES = 3


@dataclass(frozen=True, slots=True)
class Hit:
    body: bytes
    similarity: float
    source: str  # the request whose answer this is


async def open_bucket(js: JetStreamContext, subjects: Subjects, settings: BusSettings) -> KeyValue:
    return await ensure_bucket(
        js,
        settings,
        subjects.semantic_cache_bucket,
        "Modelbus semantic cache: prompt vectors and answers",
        ttl_s=settings.semantic_cache_max_age_s,
        max_bytes=settings.semantic_cache_max_bytes,
    )


class SemanticCache:
    def __init__(
        self, js: JetStreamContext, kv: KeyValue, bucket: str, bus: BusClient, live: LiveConfig
    ) -> None:
        self._js = js
        self._kv = kv
        self._bucket = bucket
        self._bus = bus
        self._live = live
        self._index = VectorIndex()
        self._expired_at = time.monotonic()

    @classmethod
    async def open(
        cls, js: JetStreamContext, subjects: Subjects, settings: BusSettings, bus: BusClient, live: LiveConfig
    ) -> SemanticCache:
        return cls(js, await open_bucket(js, subjects, settings), subjects.semantic_cache_bucket, bus, live)

    def __len__(self) -> int:
        return len(self._index)

    @staticmethod
    def probe(admitted: Admitted) -> Probe | None:
        """The request's cache view, or None if its model has no semantic cache or it is not eligible."""
        config = admitted.target.semantic_cache
        if config is None:
            return None
        return probe_for(
            admitted.target, config, admitted.endpoint, admitted.payload, admitted.identity.consumer
        )

    async def lookup(self, admitted: Admitted, probe: Probe) -> Hit | None:
        config = admitted.target.semantic_cache
        assert config is not None  # a probe exists only for models with a semantic cache
        model = sanitize(admitted.target.name)  # a configured model
        vector = await self._vector(probe, config.timeout_ms / 1000)
        if vector is None:
            metrics.SEMANTIC_CACHE.labels(model, "unavailable").inc()
            return None
        now_ms = int(time.time() * 1000)
        for match in self._index.nearest(probe.partition, vector, now_ms, _CANDIDATES):
            if match.similarity < config.threshold:
                break
            try:
                entry = await self._kv.get(match.key)
                data = orjson.loads(entry.value or b"{}")
            except (KeyNotFoundError, orjson.JSONDecodeError):
                self._index.drop(match.key)  # gone (expired or replaced) since the watch saw it
                continue
            if data.get("p") != probe.partition or int(data.get("x", 0)) <= now_ms:
                continue
            if config.match_entities and conflict(probe.text, str(data.get("t", ""))) is not None:
                continue  # similar, but opposite words or another order: not the same question
            metrics.SEMANTIC_CACHE.labels(model, "hit").inc()
            return Hit(str(data["b"]).encode(), match.similarity, str(data.get("r", "")))
        metrics.SEMANTIC_CACHE.labels(model, "miss").inc()
        return None

    async def store(self, admitted: Admitted, probe: Probe, body: bytes, request_id: str) -> None:
        """Keep an answer (called after it was sent); a failure only means one entry fewer."""
        config = admitted.target.semantic_cache
        assert config is not None
        try:
            vector = await self._vector(probe, _STORE_TIMEOUT_S)
            if vector is None:
                return
            expires_ms = int((time.time() + config.ttl_s) * 1000)
            key = f"{probe.partition}.{hashlib.sha256(probe.text.encode()).hexdigest()[:24]}"
            entry = {
                "p": probe.partition,
                "m": admitted.target.name,
                "x": expires_ms,
                "r": request_id,
                "t": probe.text,
                "v": base64.b64encode(vector.tobytes()).decode(),
                "b": body.decode(),
            }
            await self._kv.put(key, orjson.dumps(entry))
            self._index.put(key, probe.partition, vector, expires_ms)  # the watch confirms it
        except Exception as exc:  # noqa: BLE001 - a cache that misses a write is still correct
            log.warning("answer not kept in the semantic cache: %s", exc)
        if time.monotonic() - self._expired_at > _EXPIRE_EVERY_S:
            self._expired_at = time.monotonic()
            self._index.expire(int(time.time() * 1000))

    async def _vector(self, probe: Probe, timeout_s: float) -> Vector | None:
        if probe.vector is not None:
            return probe.vector
        model = self._live.config.model(probe.embedding_model)
        if model is None:
            return None
        payload = {"model": model.name, "input": probe.text[:_MAX_TEXT]}
        answer = await ask(self._bus, model, Endpoint.EMBEDDINGS, payload, timeout_s, CACHE_CONSUMER)
        if answer is None:
            return None
        try:
            values = orjson.loads(answer)["data"][0]["embedding"]
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
            log.warning("embedding model %s gave no usable vector", model.name)
            return None
        probe.vector = unit(values) if isinstance(values, list) else None
        return probe.vector

    async def watch(self) -> None:
        """Keep the index equal to the bucket until cancelled (supervised: a lost watch starts over)."""
        async for entry in watch_bucket(self._js, self._kv, self._bucket):
            if entry is None:
                continue
            if entry.operation is not None or not entry.value:
                self._index.drop(entry.key)
                continue
            try:
                data = orjson.loads(entry.value)
                vector = np.frombuffer(base64.b64decode(data["v"]), dtype=np.float32)
                self._index.put(entry.key, str(data["p"]), vector, int(data["x"]))
            except (orjson.JSONDecodeError, KeyError, ValueError, TypeError):
                log.warning("unreadable semantic cache entry %s ignored", entry.key)
