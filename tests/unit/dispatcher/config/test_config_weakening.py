"""Which configuration changes weaken policy, and that tightening ones do not."""

from __future__ import annotations

from typing import Any

from dispatcher.config.config_weakening import weakenings
from schemas.config import ConsumerConfig, ModelbusConfig, ModelConfig, RouteMatch, RouteRule
from schemas.policy import GuardrailsConfig, Limits, RoleConfig
from schemas.traffic import Cost, PoolConfig, SemanticCacheConfig


def _config(**change: Any) -> ModelbusConfig:
    cost = Cost(input_per_1k=1, output_per_1k=1)
    semantic = SemanticCacheConfig(embedding_model="e", threshold=0.9, shared=change.get("shared", False))
    return ModelbusConfig(
        models=[
            ModelConfig(
                name="a", cost=cost, guardrails=GuardrailsConfig(max_input_tokens=change.get("max_in", 1000))
            ),
            ModelConfig(name="b", cost=cost, semantic_cache=semantic, fallbacks=change.get("fallbacks", [])),
            ModelConfig(name="e", endpoints=["embeddings"]),  # type: ignore[list-item]
        ],
        roles=[RoleConfig(name="r", models=change.get("patterns", ["a"]))],
        routes=[RouteRule(name="x", match=RouteMatch(model="a"), target=change.get("target", "a"))],
        pools=[PoolConfig(name="p", members=change.get("members", ["a", "b"]))],
        consumers=[
            ConsumerConfig(
                name="c",
                roles=change.get("roles", ["r"]),
                limits=change.get("limits", Limits(requests_per_min=10, cost_per_day=5)),
                guardrails=GuardrailsConfig(pii=change.get("pii", "mask"), pii_kinds=change.get("kinds")),
            )
        ],
    )


def _found(**change: Any) -> list[str]:
    return [str(w) for w in weakenings(_config(), _config(**change))]


def test_loosening_is_found_everywhere_policy_lives() -> None:
    assert _found(pii="log") == ["consumer c guardrails: pii mask -> log"]
    assert _found(kinds=["email"]) == [
        "consumer c guardrails: pii_kinds no longer include card, iban, ip, national_id, phone, secret, ssn"
    ]
    assert _found(max_in=None) == ["model a guardrails: max_input_tokens 1000 -> unset"]
    assert _found(limits=Limits(requests_per_min=20)) == [
        "consumer c limits: requests_per_min 10 -> 20",
        "consumer c limits: cost_per_day 5 -> unset",
    ]
    assert _found(patterns=["a", "b*"]) == ["role r: widened by b*"]
    assert _found(roles=["r", "user"]) == ["consumer c: gains roles user"]
    assert _found(target="b") == ["route x: moved: a -> b"]
    assert _found(members=["a"]) == ["pool p: members ['a', 'b'] -> ['a']"]
    assert _found(fallbacks=["a"]) == ["model b: fallbacks [] -> ['a']"]
    assert _found(shared=True) == ["model b semantic_cache: answers now shared across consumers"]


def test_tightening_and_the_first_configuration_weaken_nothing() -> None:
    assert _found(pii="block", max_in=500, limits=Limits(requests_per_min=5, cost_per_day=1)) == []
    assert _found(patterns=[]) == []
    assert weakenings(None, _config()) == []
