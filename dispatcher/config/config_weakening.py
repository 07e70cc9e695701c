"""Which changes between two configurations weaken policy: a guardrail loosened or removed, a limit
raised or removed, a role or a consumer's access widened, traffic moved to other models (routing
rules, pools, fallbacks), a semantic cache opened across consumers or made looser.

`modelbus config diff` marks these and `modelbus config apply` refuses them without
`--confirm-weakening`: such a change is the kind that silently sends production traffic somewhere
else or switches a protection off, so it must be meant. Tightening changes pass unremarked.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from schemas.config import ModelbusConfig
from schemas.policy import GUARD_ACTION_ORDER, PII_KINDS, GuardrailsConfig, Limits

_ACTIONS = ("pii", "injection", "content", "output_pii")
_LIMITS = (
    "requests_per_min",
    "tokens_per_min",
    "tokens_per_day",
    "tokens_per_month",
    "cost_per_day",
    "cost_per_month",
)


@dataclass(frozen=True, slots=True)
class Weakening:
    where: str  # e.g. "consumer team-a guardrails"
    what: str  # e.g. "pii mask -> log"

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


def weakenings(old: ModelbusConfig | None, new: ModelbusConfig) -> list[Weakening]:
    if old is None:
        return []  # the first configuration weakens nothing that was in force
    return [*_guardrails(old, new), *_limits(old, new), *_access(old, new), *_traffic(old, new)]


def _guardrails(old: ModelbusConfig, new: ModelbusConfig) -> Iterator[Weakening]:
    for model in old.models:
        found = new.model(model.name)
        if found is not None:
            yield from _guard(f"model {model.name} guardrails", model.guardrails, found.guardrails)
            if model.semantic_cache is not None and found.semantic_cache is not None:
                where = f"model {model.name} semantic_cache"
                if found.semantic_cache.shared and not model.semantic_cache.shared:
                    yield Weakening(where, "answers now shared across consumers")
                if found.semantic_cache.threshold < model.semantic_cache.threshold:
                    yield Weakening(
                        where,
                        f"threshold {model.semantic_cache.threshold:g} -> {found.semantic_cache.threshold:g}",
                    )
                if model.semantic_cache.match_entities and not found.semantic_cache.match_entities:
                    yield Weakening(where, "match_entities turned off")
            elif found.semantic_cache is not None and found.semantic_cache.shared:
                yield Weakening(f"model {model.name} semantic_cache", "added, shared across consumers")
    for consumer in old.consumers:
        found_consumer = new.consumer(consumer.name)
        if found_consumer is not None:
            yield from _guard(
                f"consumer {consumer.name} guardrails", consumer.guardrails, found_consumer.guardrails
            )


def _rank(action: str | None) -> int:
    return GUARD_ACTION_ORDER.index(action) if action in GUARD_ACTION_ORDER else 0  # unset: off


def _guard(where: str, old: GuardrailsConfig | None, new: GuardrailsConfig | None) -> Iterator[Weakening]:
    if old is None:
        return
    empty = GuardrailsConfig()
    now = new or empty
    for name in _ACTIONS:
        before, after = getattr(old, name), getattr(now, name)
        if _rank(after) < _rank(before):
            yield Weakening(where, f"{name} {before} -> {after or 'unset'}")
    if old.sanitize_output and not now.sanitize_output:
        yield Weakening(where, "sanitize_output turned off")
    raised = now.max_input_tokens is None or now.max_input_tokens > (old.max_input_tokens or 0)
    if old.max_input_tokens is not None and raised:
        yield Weakening(
            where, f"max_input_tokens {old.max_input_tokens} -> {now.max_input_tokens or 'unset'}"
        )
    if old.pii_kinds is not None or now.pii_kinds is not None:
        dropped = sorted(set(old.pii_kinds or PII_KINDS) - set(now.pii_kinds or PII_KINDS))
        if dropped:
            yield Weakening(where, f"pii_kinds no longer include {', '.join(dropped)}")
    if old.injection_classifier and now.injection_classifier != old.injection_classifier:
        yield Weakening(
            where, f"injection_classifier {old.injection_classifier} -> {now.injection_classifier or 'unset'}"
        )
    if old.content_categories is not None:
        for category, patterns in old.content_categories.items():
            kept = (now.content_categories or {}).get(category, [])
            if set(patterns) - set(kept):
                yield Weakening(where, f"content category {category!r} lost patterns")


def _limits(old: ModelbusConfig, new: ModelbusConfig) -> Iterator[Weakening]:
    for consumer in old.consumers:
        found = new.consumer(consumer.name)
        if found is None:
            continue
        yield from _limit(f"consumer {consumer.name} limits", consumer.limits, found.limits)
        for model, limits in consumer.model_limits.items():
            yield from _limit(
                f"consumer {consumer.name} limits on {model}", limits, found.model_limits.get(model)
            )


def _limit(where: str, old: Limits | None, new: Limits | None) -> Iterator[Weakening]:
    if old is None:
        return
    for name in _LIMITS:
        before, after = getattr(old, name), getattr(new, name) if new is not None else None
        if before is not None and (after is None or after > before):
            yield Weakening(where, f"{name} {before:g} -> {'unset' if after is None else f'{after:g}'}")


def _access(old: ModelbusConfig, new: ModelbusConfig) -> Iterator[Weakening]:
    roles = {r.name: r for r in new.all_roles}
    for role in old.all_roles:
        found = roles.get(role.name)
        if found is None:
            continue
        wider = sorted(set(found.models) - set(role.models)) + sorted(
            set(found.operations) - set(role.operations)
        )
        if wider:
            yield Weakening(f"role {role.name}", f"widened by {', '.join(wider)}")
    for consumer in old.consumers:
        found_consumer = new.consumer(consumer.name)
        if found_consumer is None:
            continue
        added = sorted(set(found_consumer.roles) - set(consumer.roles))
        if found_consumer.admin and not consumer.admin:
            added.append("admin")
        if added:
            yield Weakening(f"consumer {consumer.name}", f"gains roles {', '.join(added)}")


def _traffic(old: ModelbusConfig, new: ModelbusConfig) -> Iterator[Weakening]:
    before = {r.name: r for r in old.routes}
    after = {r.name: r for r in new.routes}
    for name in sorted(before.keys() | after.keys()):
        one, other = before.get(name), after.get(name)
        if one == other:
            continue
        if one is None:
            assert other is not None
            yield Weakening(f"route {name}", f"added: {other.match.model} -> {other.target}")
        elif other is None:
            yield Weakening(f"route {name}", f"removed (was {one.match.model} -> {one.target})")
        elif one.target != other.target:
            yield Weakening(f"route {name}", f"moved: {one.target} -> {other.target}")
        else:
            yield Weakening(f"route {name}", "matches other requests")
    for pool in old.pools:
        found = new.pool(pool.name)
        if found is not None and found.members != pool.members:
            yield Weakening(f"pool {pool.name}", f"members {pool.members} -> {found.members}")
    for model in old.models:
        found_model = new.model(model.name)
        if found_model is not None and found_model.fallbacks != model.fallbacks:
            yield Weakening(f"model {model.name}", f"fallbacks {model.fallbacks} -> {found_model.fallbacks}")
