"""Traffic parts of the configuration: the semantic cache, token prices, pools of interchangeable
models, and what a consumer asks of the route by default (longest wait, highest cost)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SemanticCacheConfig(_Config):
    """Answers to earlier requests whose last user turn means the same, found by embedding it with
    an embeddings model served through the bus. Only plain text requests are eligible: no tools,
    images, streams or `n > 1`; everything else in the request must be identical."""

    embedding_model: str = Field(description="an embeddings model of this configuration")
    threshold: float = Field(
        default=0.89,
        gt=0,
        le=1,
        description="cosine similarity a hit needs; 0.89 measured for all-MiniLM-L6-v2 (docs/traffic.md)",
    )
    ttl_s: float = Field(default=3600.0, gt=0, description="how long an answer may be served")
    first_look: bool = Field(
        default=False,
        description="look before every request; false: only as the `semantic_cache` degradation step",
    )
    shared: bool = Field(default=False, description="serve one consumer's answers to other consumers")
    match_entities: bool = Field(
        default=True,
        description="a hit also needs the same numbers, names and negation (near-misses differ there)",
    )
    timeout_ms: float = Field(
        default=500.0, gt=0, le=10_000, description="longest wait for the embedding; then a miss"
    )


class Cost(_Config):
    """Price of a model's tokens, in the gateway's one currency (whatever the operator bills in)."""

    input_per_1k: float = Field(ge=0, description="per 1,000 prompt tokens")
    output_per_1k: float = Field(ge=0, description="per 1,000 completion tokens")

    def of(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_per_1k + completion_tokens * self.output_per_1k) / 1000


class PoolConfig(_Config):
    """Interchangeable models under one name: a request for the pool goes to the cheapest member
    whose estimated wait fits what the request (or its consumer) asks for."""

    name: str = Field(min_length=1, max_length=128)
    members: list[str] = Field(min_length=1, description="model names")
    owned_by: str = "modelbus"

    @model_validator(mode="after")
    def _distinct(self) -> PoolConfig:
        if len(set(self.members)) != len(self.members):
            raise ValueError(f"pool {self.name!r} lists a member twice")
        return self


class RouteNeeds(_Config):
    """What a request asks of its route; headers `x-modelbus-max-wait-ms` and `x-modelbus-max-cost`
    override a consumer's defaults."""

    max_wait_ms: float | None = Field(default=None, gt=0, description="longest estimated queue wait")
    max_cost: float | None = Field(
        default=None, ge=0, description="highest estimated cost of one request (prompt + max_tokens)"
    )
