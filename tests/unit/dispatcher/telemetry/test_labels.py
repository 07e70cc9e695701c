"""Metric label values: configured names pass, anything else is `unknown`, and no value is unsafe."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from dispatcher.telemetry.exposition import authorized
from dispatcher.telemetry.labels import MAX_LENGTH, UNKNOWN, MetricLabels, sanitize
from schemas.config import ModelConfig, VersionConfig
from tests.support.servers import with_consumers

_SAFE = re.compile(rf"[A-Za-z0-9_.:/@+-]{{1,{MAX_LENGTH}}}")


@given(st.text())
def test_sanitized_values_are_short_and_printable(value: str) -> None:
    assert _SAFE.fullmatch(sanitize(value))


def test_only_configured_names_become_labels() -> None:
    config = with_consumers(
        [ModelConfig(name="chat"), ModelConfig(name="canary", versions=[VersionConfig(name="v2")])]
    )
    labels = MetricLabels.of(config)
    assert labels.model("chat") == "chat"
    assert labels.version("v2") == "v2" and labels.version("default") == "default"
    assert labels.consumer("tester") == "tester"
    for made_up in ("chat\x00", "*", ">", "chat ", "x" * 10_000, None, ""):
        assert labels.model(made_up) == UNKNOWN
        assert labels.consumer(made_up) == UNKNOWN
        assert labels.version(made_up) == UNKNOWN


def test_a_configured_name_is_sanitized_too() -> None:
    labels = MetricLabels(frozenset({'odd"name\n' + "y" * 100}), frozenset(), frozenset())
    value = labels.model('odd"name\n' + "y" * 100)
    assert _SAFE.fullmatch(value) and value.startswith("odd_name_")


def test_metrics_token_is_required_exactly() -> None:
    token = SecretStr("s3cret-token")
    assert authorized(None, None) and authorized("Bearer anything", None)
    assert authorized("Bearer s3cret-token", token) and authorized("bearer s3cret-token", token)
    for header in (None, "", "Bearer", "Bearer s3cret", "Basic s3cret-token", "s3cret-token"):
        assert not authorized(header, token)
