"""Assertions about a configuration's behaviour, written beside it (`config.tests.yaml` next to
`config.yaml`) and checked by `modelbus config test` and before every `modelbus config apply`.

Each assertion names a consumer and exactly one expectation:

    assertions:
      - {consumer: team-a, model: assistant, prompt: "Wie spät ist es?", reaches: assistant-de}
      - {consumer: team-a, model: finance-model, refused: true}
      - {consumer: team-a, model: assistant, masks_pii: true}
      - {consumer: team-a, max_requests_per_min: 100}
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.envelope import Endpoint

# A prompt with PII of the kinds every detector knows, for `masks_pii` when no prompt is given.
PII_SAMPLE = "Please write to jane.doe@example.com about card 4111 1111 1111 1111."
_EXPECTATIONS = (
    "reaches",
    "refused",
    "masks_pii",
    "max_requests_per_min",
    "max_tokens_per_min",
    "max_tokens_per_day",
    "max_cost_per_day",
)


class ConfigAssertion(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, description="shown in the report; default: the assertion itself")
    consumer: str = Field(min_length=1)
    model: str | None = Field(default=None, description="the model (or pool) the request names")
    endpoint: Endpoint = Endpoint.CHAT
    prompt: str | None = Field(default=None, description="the user's text; default: a neutral question")
    features: list[Literal["tools", "json_mode", "stream"]] = Field(default_factory=list)

    reaches: str | None = Field(default=None, description="the model that serves the request")
    refused: bool | None = Field(default=None, description="true: admission refuses it (any reason)")
    masks_pii: bool | None = Field(default=None, description="true: PII reaches the model masked")
    max_requests_per_min: int | None = Field(default=None, ge=1, description="a limit at most this")
    max_tokens_per_min: int | None = Field(default=None, ge=1)
    max_tokens_per_day: int | None = Field(default=None, ge=1)
    max_cost_per_day: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _one_expectation(self) -> ConfigAssertion:
        given = [name for name in _EXPECTATIONS if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(_EXPECTATIONS)} (got {given or 'none'})")
        if given[0] in ("reaches", "refused", "masks_pii") and self.model is None:
            raise ValueError(f"`{given[0]}` needs the `model` the request names")
        return self

    @property
    def expectation(self) -> str:
        return next(name for name in _EXPECTATIONS if getattr(self, name) is not None)

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        target = f" asking {self.model}" if self.model else ""
        return f"{self.consumer}{target}: {self.expectation} {getattr(self, self.expectation)}"


class ConfigTests(BaseModel):
    model_config = ConfigDict(extra="forbid")

    assertions: list[ConfigAssertion] = Field(default_factory=list)
