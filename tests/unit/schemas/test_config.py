"""Config validation: a bad file is refused with a message that names the field."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.config.config_file import dump_config, parse_config
from dispatcher.errors import ConfigError
from schemas.config import ModelbusConfig


def test_valid_config_round_trips() -> None:
    text = """
models:
  - name: llama-3.1-8b
    backend: {type: openai, base_url: "http://gpu:8000/v1", served_model: meta/llama}
    max_concurrency: 32
  - name: emb
    endpoints: [embeddings]
consumers:
  - name: team-a
    keys: [{id: k1, hash: "sha256:%s"}]
""" % ("ab" * 32)
    config = parse_config(text)
    assert config.models[0].backend.type == "openai"
    assert config.models[1].backend.type == "simulator"
    assert parse_config(dump_config(config)) == config


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("models: [{name: a, max_concurrency: 0}]", "models.0.max_concurrency"),
        ("models: [{name: a, backend: {type: gpu}}]", "models.0.backend"),
        (
            "models: [{name: a, backend: {type: simulator, tokens_per_s: -1}}]",
            "models.0.backend.simulator.tokens_per_s",
        ),
        ("models: [{name: a, endpoints: [chat, images]}]", "models.0.endpoints.1"),
        ("models: [{name: a, colour: blue}]", "models.0.colour"),
        ("consumers: [{name: c, keys: [{id: k, hash: plaintext-key}]}]", "consumers.0.keys.0"),
    ],
)
def test_invalid_config_names_the_field(text: str, field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "cfg.yaml")
    assert field in str(caught.value)
    assert str(caught.value).startswith("cfg.yaml:")


def test_duplicate_model_names_are_refused() -> None:
    with pytest.raises(ConfigError, match="duplicate model names"):
        parse_config("models: [{name: a}, {name: a}]")


def test_yaml_syntax_error_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_config("models: [")


@given(st.text(min_size=1, max_size=50))
def test_any_non_empty_model_name_is_accepted(name: str) -> None:
    config = ModelbusConfig.model_validate({"models": [{"name": name}]})
    assert config.model(name) is not None


@pytest.mark.parametrize(
    "model",
    [
        "{name: a, max_concurrency: 2, affinity: {guest_slots: 2}}",
        "{name: a, max_concurrency: 8, versions: [{name: v, max_concurrency: 1}], affinity: {guest_slots: 1}}",
    ],
)
def test_guest_slots_must_leave_a_home_slot(model: str) -> None:
    with pytest.raises(ConfigError, match="guest_slots"):
        parse_config(f"models: [{model}]")
    fewer = model.replace("guest_slots: 2", "guest_slots: 1").replace(
        "max_concurrency: 1}", "max_concurrency: 2}"
    )
    assert parse_config(f"models: [{fewer}]").models[0].affinity is not None
