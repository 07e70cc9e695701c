"""Choosing the version of a model that serves a request: weighted canaries, optionally sticky."""

from __future__ import annotations

import hashlib
import random

from schemas.config import DEFAULT_VERSION, ModelConfig


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
