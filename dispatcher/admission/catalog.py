"""Which models this gateway serves, and on which endpoints."""

from __future__ import annotations

from dispatcher.errors import NotFound
from schemas.config import ModelbusConfig, ModelConfig
from schemas.envelope import Endpoint


class Catalog:
    def __init__(self, config: ModelbusConfig) -> None:
        self._models = {m.name: m for m in config.models}
        # What a client may ask for by name: models and pools of interchangeable models.
        self.listed: dict[str, str] = {m.name: m.owned_by for m in config.models} | {
            p.name: p.owned_by for p in config.pools
        }

    @property
    def models(self) -> list[ModelConfig]:
        return list(self._models.values())

    def get(self, name: str) -> ModelConfig | None:
        return self._models.get(name)

    def resolve(self, name: str, endpoint: Endpoint) -> ModelConfig:
        model = self._models.get(name)
        if model is None:
            raise NotFound(f"the model {name!r} does not exist", "model_not_found", "model")
        if not model.serves(endpoint):
            raise NotFound(
                f"the model {name!r} does not serve the {endpoint.value} endpoint", "model_not_found", "model"
            )
        return model
