"""Guardrail policies resolved from configuration, and the inspectors that apply them.

A model and a consumer may each configure guardrails. Unset fields inherit; where both set one, the
stricter action wins (off < log < mask < block), so a consumer can tighten a model's policy but never
loosen it. Kinds and categories are unions; the token limit is the smaller. Inspectors are compiled
once per distinct policy and cached.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from dispatcher.guardrails.content import ContentFilter
from dispatcher.guardrails.findings import Finding, mask, non_overlapping
from dispatcher.guardrails.injection import detect_injection
from dispatcher.guardrails.pii import detect_pii
from dispatcher.guardrails.sanitize import sanitize
from dispatcher.guardrails.stream import StreamMasker
from schemas.policy import (
    DEFAULT_PHONE_REGIONS,
    GUARD_ACTION_ORDER,
    PII_KINDS,
    ClassifierFailure,
    GuardAction,
    GuardrailsConfig,
)

Categories = tuple[tuple[str, tuple[str, ...]], ...]


@dataclass(frozen=True, slots=True)
class InputPolicy:
    pii: GuardAction = "off"
    pii_kinds: frozenset[str] = frozenset(PII_KINDS)
    injection: GuardAction = "off"
    classifier: str | None = None
    content: GuardAction = "off"
    categories: Categories | None = None  # None: the built-in ones
    max_input_tokens: int | None = None
    injection_layers: frozenset[str] = frozenset(["heuristics"])  # "heuristics", "classifier"
    classifier_failure: ClassifierFailure = "open"
    phone_regions: tuple[str, ...] = DEFAULT_PHONE_REGIONS

    @property
    def active(self) -> bool:
        """Admission has something to check (the texts, or the classifier)."""
        return self.inspects or self.classifier_injection

    @property
    def inspects(self) -> bool:
        """The offline detectors have something to do with each text."""
        return self.pii != "off" or self.heuristic_injection or self.content != "off"

    @property
    def heuristic_injection(self) -> bool:
        return self.injection != "off" and "heuristics" in self.injection_layers

    @property
    def classifier_injection(self) -> bool:
        return (
            self.injection != "off" and self.classifier is not None and "classifier" in self.injection_layers
        )


@dataclass(frozen=True, slots=True)
class OutputPolicy:
    pii: GuardAction = "off"
    pii_kinds: frozenset[str] = frozenset(PII_KINDS)
    sanitize: bool = False
    phone_regions: tuple[str, ...] = DEFAULT_PHONE_REGIONS

    @property
    def active(self) -> bool:
        return self.pii != "off" or self.sanitize


def _stricter(a: GuardAction | None, b: GuardAction | None) -> GuardAction:
    values = [v for v in (a, b) if v is not None]
    return max(values, key=GUARD_ACTION_ORDER.index) if values else "off"


def resolve(
    model: GuardrailsConfig | None, consumer: GuardrailsConfig | None
) -> tuple[InputPolicy, OutputPolicy]:
    both = [c for c in (model, consumer) if c is not None]
    if not both:
        return InputPolicy(), OutputPolicy()
    kinds_set = [frozenset(c.pii_kinds) for c in both if c.pii_kinds is not None]
    kinds = frozenset().union(*kinds_set) if kinds_set else frozenset(PII_KINDS)
    categories: dict[str, tuple[str, ...]] | None = None
    for config in both:
        if config.content_categories is not None:
            categories = categories or {}
            for name, patterns in config.content_categories.items():
                categories[name] = tuple(dict.fromkeys((*categories.get(name, ()), *patterns)))
    limits = [c.max_input_tokens for c in both if c.max_input_tokens is not None]
    classifiers = [c.injection_classifier for c in both if c.injection_classifier]
    m, c = model or GuardrailsConfig(), consumer or GuardrailsConfig()
    classifier = classifiers[-1] if classifiers else None
    regions = (
        tuple(dict.fromkeys(r for cfg in both for r in cfg.phone_regions or ())) or DEFAULT_PHONE_REGIONS
    )
    inputs = InputPolicy(
        pii=_stricter(m.pii, c.pii),
        pii_kinds=kinds,
        injection=_stricter(m.injection, c.injection),
        classifier=classifier,
        content=_stricter(m.content, c.content),
        categories=tuple(sorted(categories.items())) if categories is not None else None,
        max_input_tokens=min(limits) if limits else None,
        injection_layers=_layers(both, classifier),
        classifier_failure="closed"
        if any(cfg.injection_classifier_failure == "closed" for cfg in both)
        else "open",
        phone_regions=regions,
    )
    outputs = OutputPolicy(
        pii=_stricter(m.output_pii, c.output_pii),
        pii_kinds=kinds,
        sanitize=bool(m.sanitize_output or c.sanitize_output),
        phone_regions=regions,
    )
    return inputs, outputs


_LAYERS = {"heuristics": {"heuristics"}, "classifier": {"classifier"}, "both": {"heuristics", "classifier"}}


def _layers(configs: list[GuardrailsConfig], classifier: str | None) -> frozenset[str]:
    """The injection checks to run: what the model and the consumer ask for, together (more checks
    are stricter). Unset: both when a classifier is named, else the heuristics. A classifier layer
    with no classifier named anywhere falls back to the heuristics rather than to nothing."""
    chosen: set[str] = set()
    for config in configs:
        if config.injection_layers is not None:
            chosen |= _LAYERS[config.injection_layers]
    if not chosen:
        chosen = {"heuristics", "classifier"} if classifier else {"heuristics"}
    if classifier is None and "classifier" in chosen:
        chosen = (chosen - {"classifier"}) | {"heuristics"}
    return frozenset(chosen)


@dataclass
class Inspection:
    """What the input guard did to one text: its new form, and one event per finding."""

    text: str
    events: list[str] = field(default_factory=list)  # "<kind>:<action>", e.g. "pii.email:mask"
    blocked_by: str | None = None


class InputGuard:
    def __init__(self, policy: InputPolicy) -> None:
        self.policy = policy
        self._content = (
            ContentFilter(dict(policy.categories) if policy.categories is not None else None)
            if policy.content != "off"
            else None
        )

    def inspect(self, text: str) -> Inspection:
        policy = self.policy
        result = Inspection(text)
        to_mask: list[Finding] = []
        checks: list[tuple[GuardAction, list[Finding], str]] = []
        if policy.pii != "off":
            checks.append((policy.pii, detect_pii(text, policy.pii_kinds, policy.phone_regions), "pii."))
        if policy.heuristic_injection:
            checks.append((policy.injection, detect_injection(text), ""))
        if self._content is not None:
            checks.append((policy.content, self._content.find(text), ""))
        for action, findings, prefix in checks:
            for finding in findings:
                result.events.append(f"{prefix}{finding.kind}:{action}")
                if action == "block" and result.blocked_by is None:
                    result.blocked_by = prefix + finding.kind
                elif action == "mask":
                    to_mask.append(finding)
        if to_mask and result.blocked_by is None:
            result.text = mask(text, non_overlapping(to_mask))
        return result


class OutputGuard:
    def __init__(self, policy: OutputPolicy) -> None:
        self.policy = policy
        self._kinds = policy.pii_kinds

    def _detect(self, text: str) -> list[Finding]:
        return detect_pii(text, self._kinds, self.policy.phone_regions) if self.policy.pii != "off" else []

    def apply(self, text: str) -> tuple[str, list[Finding]]:
        """A whole answer's text, masked (if the policy masks) and sanitized."""
        if self.policy.sanitize:
            text = sanitize(text)
        found = self._detect(text)
        if found and self.policy.pii in ("mask", "block"):
            text = mask(text, non_overlapping(found))
        return text, found

    def stream(self) -> StreamMasker | None:
        if self.policy.pii not in ("mask", "block"):
            return None
        return StreamMasker(self._detect)


@lru_cache(maxsize=256)
def input_guard(policy: InputPolicy) -> InputGuard:
    return InputGuard(policy)


@lru_cache(maxsize=256)
def output_guard(policy: OutputPolicy) -> OutputGuard:
    return OutputGuard(policy)
