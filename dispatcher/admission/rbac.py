"""Role-based access per model and operation: deny unless one of the caller's roles grants it."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable

from schemas.config import ModelbusConfig
from schemas.policy import Operation


class Authorizer:
    """Built once per configuration revision; answers are memoized per (roles, model, operation)."""

    def __init__(self, config: ModelbusConfig) -> None:
        self._roles: dict[str, tuple[re.Pattern[str] | None, frozenset[str]]] = {}
        for role in config.all_roles:
            pattern = "|".join(f"(?:{fnmatch.translate(p)})" for p in role.models)
            self._roles[role.name] = (re.compile(pattern) if pattern else None, frozenset(role.operations))
        self._memo: dict[tuple[frozenset[str], str, str], bool] = {}

    def permits(self, roles: frozenset[str], model: str | None, operation: Operation) -> bool:
        """Whether any role grants `operation` (on `model`, unless the operation has none, like admin)."""
        key = (roles, model or "", operation)
        found = self._memo.get(key)
        if found is None:
            found = any(self._grants(role, model, operation) for role in roles)
            if len(self._memo) > 65536:  # bounded: roles and model names come from config and tokens
                self._memo.clear()
            self._memo[key] = found
        return found

    def _grants(self, role: str, model: str | None, operation: Operation) -> bool:
        rule = self._roles.get(role)
        if rule is None or operation not in rule[1]:
            return False
        if model is None:
            return True
        return rule[0] is not None and rule[0].fullmatch(model) is not None

    def visible(self, roles: frozenset[str], models: Iterable[str]) -> list[str]:
        """Models the caller may use for anything (what /v1/models lists)."""
        ops: tuple[Operation, ...] = ("chat", "completions", "embeddings", "batch")
        return [m for m in models if any(self.permits(roles, m, op) for op in ops)]
