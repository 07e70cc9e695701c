"""Addressing a request: which version of its model serves it (weighted canaries, optionally sticky),
and the envelope that carries it there."""

from __future__ import annotations

import hashlib
import random
from typing import Any

from schemas.config import DEFAULT_VERSION, ModelConfig
from schemas.envelope import RequestEnvelope


def _draw(model: ModelConfig, consumer: str) -> float:
    if model.sticky:
        # The same consumer always lands on the same point, hence on the same version, for as long
        # as the weights stay the same.
        digest = hashlib.sha256(f"{model.name}\0{consumer}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64
    return random.random()


def choose_version(model: ModelConfig, consumer: str) -> str:
    if not model.versions:
        return DEFAULT_VERSION
    total = sum(v.weight for v in model.versions)
    point = _draw(model, consumer) * total
    for version in model.versions:
        point -= version.weight
        if point < 0:
            return version.name
    return next(v.name for v in reversed(model.versions) if v.weight > 0)


def envelope_to(target: ModelConfig, consumer: str, request_id: str, **fields: Any) -> RequestEnvelope:
    """The envelope that takes a request to `target`, in the version chosen for `consumer`."""
    return RequestEnvelope(
        id=request_id,
        target=target.name,
        version=choose_version(target, consumer),
        consumer=consumer,
        **fields,
    )
