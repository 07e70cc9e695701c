"""Content-based routing rules: language (real sentences), prompt length, features, consumers."""

from __future__ import annotations

from typing import Any

import pytest

from dispatcher.admission.routing import ContentRouter, detect_language
from schemas.config import ModelbusConfig

CONFIG = ModelbusConfig.model_validate(
    {
        "models": [{"name": n} for n in ("chat", "german", "french", "long-context", "tool-user", "vip")],
        "routes": [
            {"name": "vip-first", "match": {"model": "chat", "consumers": ["board"]}, "target": "vip"},
            {"name": "tools", "match": {"model": "chat", "features": ["tools"]}, "target": "tool-user"},
            {"name": "long", "match": {"model": "chat", "min_prompt_chars": 2000}, "target": "long-context"},
            {"name": "de", "match": {"model": "chat", "languages": ["de"]}, "target": "german"},
            {"name": "fr", "match": {"model": "chat", "languages": ["fr"]}, "target": "french"},
        ],
    }
)
SENTENCES = {
    "de": "Können Sie mir bitte erklären, wie die Steuererklärung für Selbstständige in Deutschland funktioniert?",
    "fr": "Pourriez-vous m'expliquer comment fonctionne la déclaration d'impôts pour les indépendants en France ?",
    "en": "Could you please explain how the tax return for self-employed people works in the United Kingdom?",
}


def _chat(text: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": "chat",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}],
        **extra,
    }


@pytest.mark.parametrize(
    ("language", "expected"), [("de", ("german", "de")), ("fr", ("french", "fr")), ("en", ("chat", None))]
)
def test_language_rules_route_real_sentences(language: str, expected: tuple[str, str | None]) -> None:
    assert detect_language(SENTENCES[language]) == language
    assert ContentRouter(CONFIG).route("chat", _chat(SENTENCES[language]), "anyone") == expected


def test_rules_apply_in_order_to_features_length_and_consumers() -> None:
    router = ContentRouter(CONFIG)
    tools = [{"type": "function", "function": {"name": "f"}}]
    assert router.route("chat", _chat(SENTENCES["de"], tools=tools), "anyone") == ("tool-user", "tools")
    assert router.route("chat", _chat("word " * 500), "anyone") == ("long-context", "long")
    assert router.route("chat", _chat(SENTENCES["fr"]), "board") == ("vip", "vip-first")
    assert router.route("other-model", _chat(SENTENCES["de"]), "anyone") == ("other-model", None)


def test_unknown_route_target_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown model"):
        ModelbusConfig.model_validate(
            {
                "models": [{"name": "chat"}],
                "routes": [{"name": "x", "match": {"model": "chat"}, "target": "nope"}],
            }
        )
