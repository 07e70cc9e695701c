"""Policy parts of the configuration: roles, rate limits and token budgets, guardrails, OIDC issuers."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, model_validator


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid")


Operation = Literal["chat", "completions", "embeddings", "rerank", "tokenize", "batch", "admin"]
OPERATIONS: tuple[Operation, ...] = (
    "chat",
    "completions",
    "embeddings",
    "rerank",
    "tokenize",
    "batch",
    "admin",
)
_INFERENCE: tuple[Operation, ...] = ("chat", "completions", "embeddings", "rerank", "tokenize", "batch")


class RoleConfig(_Config):
    """A role grants operations on the models whose names match one of its patterns (`*`, `?`, `[..]`)."""

    name: str = Field(min_length=1, max_length=128)
    models: list[str] = Field(default_factory=lambda: ["*"], description="model name patterns")
    operations: list[Operation] = Field(default_factory=lambda: list(_INFERENCE))


BUILTIN_ROLES: tuple[RoleConfig, ...] = (
    RoleConfig(name="user"),
    RoleConfig(name="admin", models=[], operations=["admin"]),
)
"""Available unless the configuration defines a role of the same name."""


class Limits(_Config):
    """Per-consumer (or per consumer and model) limits; unset means unlimited."""

    requests_per_min: int | None = Field(default=None, ge=1)
    tokens_per_min: int | None = Field(default=None, ge=1)
    tokens_per_day: int | None = Field(default=None, ge=1, description="UTC calendar day")
    tokens_per_month: int | None = Field(default=None, ge=1, description="UTC calendar month")
    cost_per_day: float | None = Field(
        default=None, gt=0, description="money budget per UTC day, at the models' `cost` prices"
    )
    cost_per_month: float | None = Field(default=None, gt=0, description="money budget per UTC month")


PiiKind = Literal["email", "phone", "card", "iban", "ssn", "national_id", "ip", "secret"]
PII_KINDS: tuple[PiiKind, ...] = ("email", "phone", "card", "iban", "ssn", "national_id", "ip", "secret")
# Where a national-format phone number (no "+") is looked up: the countries of the languages the
# injection detector covers, and a few more. Numbers written with "+" or "00" need no region.
DEFAULT_PHONE_REGIONS: tuple[str, ...] = (
    "US", "GB", "DE", "FR", "ES", "IT", "PT", "BR", "NL", "BE", "PL", "RU", "CN", "JP", "KR",
    "IN", "TR", "SA", "AE", "EG", "CA", "AU", "CH", "AT", "MX",
)  # fmt: skip
InjectionLayers = Literal["heuristics", "classifier", "both"]
ClassifierFailure = Literal["open", "closed"]
GuardAction = Literal["off", "log", "mask", "block"]
"""off: not run; log: findings recorded (audit, metrics) only; mask: replaced by `[KIND]`; block: 400."""
GUARD_ACTION_ORDER: tuple[GuardAction, ...] = ("off", "log", "mask", "block")


class GuardrailsConfig(_Config):
    """Input and output guardrails. Unset fields inherit; where a model and a consumer both set one,
    the stricter action applies, so a consumer can tighten a model's policy but never loosen it."""

    pii: GuardAction | None = Field(default=None, description="PII in prompts")
    pii_kinds: list[PiiKind] | None = Field(default=None, description="default: all kinds")
    injection: Literal["off", "log", "block"] | None = Field(
        default=None, description="prompt-injection heuristics"
    )
    injection_classifier: str | None = Field(
        default=None,
        description="optional model (served through the bus) whose answer 'injection' flags the prompt",
    )
    injection_layers: InjectionLayers | None = Field(
        default=None,
        description="which injection checks run: heuristics, classifier or both (default: both when a "
        "classifier is named, else heuristics); a model's and a consumer's choices add up",
    )
    injection_classifier_failure: ClassifierFailure | None = Field(
        default=None,
        description="when the classifier cannot answer: open (the request goes on; default) or closed "
        "(503); closed wins; either way the audit row says so",
    )
    phone_regions: list[str] | None = Field(
        default=None,
        description="ISO 3166 countries whose national phone formats are recognised; default: 25 common ones",
    )
    content: GuardAction | None = Field(default=None, description="content filter categories")
    content_categories: dict[str, list[str]] | None = Field(
        default=None, description="category -> regular expressions; default: the built-in categories"
    )
    max_input_tokens: int | None = Field(default=None, ge=1, description="longer prompts get a 400")
    output_pii: GuardAction | None = Field(default=None, description="PII in responses, streams included")
    sanitize_output: bool | None = Field(
        default=None, description="strip control characters and invalid unicode from responses"
    )

    @model_validator(mode="after")
    def _patterns_compile(self) -> GuardrailsConfig:
        for region in self.phone_regions or ():
            if not re.fullmatch("[A-Z]{2}", region):
                raise ValueError(f"phone region {region!r}: expected an ISO 3166 code such as 'DE'")
        for category, patterns in (self.content_categories or {}).items():
            for pattern in patterns:
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise ValueError(f"content category {category!r}: bad pattern {pattern!r}: {exc}")
        return self


class OidcIssuerConfig(_Config):
    """Bearer JWTs from an OpenID Connect issuer (Keycloak, Okta, Entra ID, AD FS...)."""

    issuer: str = Field(min_length=1, description="must equal the token's `iss`")
    jwks_url: HttpUrl = Field(description="the issuer's JSON Web Key Set (its `jwks_uri`)")
    audiences: list[str] = Field(min_length=1, description="the token's `aud` must contain one of these")
    algorithms: list[str] = Field(
        default_factory=lambda: ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256"]
    )
    leeway_s: float = Field(default=60.0, ge=0, le=600, description="allowed clock skew")
    jwks_refetch_s: float = Field(
        default=10.0, ge=0, description="at most one key-set refetch per this many seconds (unknown key ids)"
    )
    consumer_claim: str = Field(
        default="sub",
        description="claim naming the consumer (e.g. `azp` for Keycloak clients, `appid` for Entra ID)",
    )
    roles_claim: str = Field(
        default="roles",
        description="dotted path to the roles or groups (`realm_access.roles`, `groups`, `roles`)",
    )
    role_map: dict[str, list[str]] = Field(
        default_factory=dict, description="claim value -> Modelbus roles; unmapped values name roles"
    )
    default_consumer: str | None = Field(
        default=None,
        description="consumer whose limits, guardrails and lane apply to callers with no consumer entry",
    )
