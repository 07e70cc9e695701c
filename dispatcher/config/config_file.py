"""Loading the YAML config file into `ModelbusConfig`, with errors that name the bad field."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from dispatcher.errors import ConfigError
from schemas.config import ModelbusConfig


def parse_config(text: str, source: str = "<config>") -> ModelbusConfig:
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    try:
        return ModelbusConfig.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            path = ".".join(str(p) for p in err["loc"]) or "<root>"
            line = _line_of(text, err["loc"])
            problems.append(f"{path}{f' (line {line})' if line else ''}: {err['msg']}")
        raise ConfigError(f"{source}: " + "; ".join(problems)) from exc


def _line_of(text: str, loc: tuple[int | str, ...]) -> int | None:
    """The 1-based line of the YAML node at `loc`, or of its nearest existing parent."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return None
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            child = next((v for k, v in node.value if getattr(k, "value", None) == str(part)), None)
            key = next((k for k, _ in node.value if getattr(k, "value", None) == str(part)), None)
            if child is None:
                continue  # a union's tag in the error path (e.g. `simulator`), not a YAML key
            node, line = child, (key or child).start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line  # a discriminator tag or similar: the parent's line is the best answer
    return line


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
