"""Loading the YAML config file into `ModelbusConfig`, with errors that name the bad field."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from schemas.config import ModelbusConfig


class ConfigError(ValueError):
    """The config file is missing, unreadable or invalid; the message says where."""


def parse_config(text: str, source: str = "<config>") -> ModelbusConfig:
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    try:
        return ModelbusConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{source}: {problems}") from exc


def load_config(path: Path | None) -> ModelbusConfig:
    if path is None:
        return ModelbusConfig()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from exc
    return parse_config(text, str(path))


def dump_config(config: ModelbusConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json", exclude_defaults=False), sort_keys=False)
