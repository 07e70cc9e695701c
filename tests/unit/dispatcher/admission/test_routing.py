"""Canary routing: weighted splits hold over many requests; sticky consumers keep their version."""

from __future__ import annotations

from collections import Counter

from dispatcher.admission.routing import choose_version
from schemas.config import ModelConfig, VersionConfig


def _canary(sticky: bool) -> ModelConfig:
    return ModelConfig(
        name="llama",
        versions=[VersionConfig(name="v1", weight=90), VersionConfig(name="v2", weight=10)],
        sticky=sticky,
    )


def test_ninety_ten_split_over_ten_thousand_requests_is_within_two_points() -> None:
    counts = Counter(choose_version(_canary(False), "consumer") for _ in range(10_000))
    assert abs(counts["v2"] / 10_000 - 0.10) <= 0.02
    assert counts["v1"] + counts["v2"] == 10_000


def test_sticky_consumer_always_gets_the_same_version() -> None:
    model = _canary(True)
    for consumer in (f"team-{n}" for n in range(200)):
        assert len({choose_version(model, consumer) for _ in range(20)}) == 1


def test_sticky_split_across_consumers_still_follows_the_weights() -> None:
    counts = Counter(choose_version(_canary(True), f"team-{n}") for n in range(10_000))
    assert abs(counts["v2"] / 10_000 - 0.10) <= 0.02


def test_zero_weight_version_gets_nothing_and_no_versions_means_default() -> None:
    model = ModelConfig(
        name="m", versions=[VersionConfig(name="a", weight=1), VersionConfig(name="b", weight=0)]
    )
    assert {choose_version(model, "c") for _ in range(1000)} == {"a"}
    assert choose_version(ModelConfig(name="plain"), "c") == "default"
