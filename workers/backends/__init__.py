"""Model backend adapters. Each turns an OpenAI-shaped payload into OpenAI-shaped results."""

from __future__ import annotations

from schemas.config import Backend as BackendConfig
from schemas.config import InjectionNgramBackend, InjectionSimilarityBackend, OpenAIBackend, SimulatorBackend
from workers.backends.backend_errors import BackendError
from workers.backends.base import Backend
from workers.backends.openai_compat import OpenAICompatBackend


def build_backend(config: BackendConfig, model: str, max_concurrency: int) -> Backend:
    if isinstance(config, SimulatorBackend):
        # Imported here: the simulator is a development tool, loaded only by a worker configured
        # with it, never by one in front of a real backend.
        from workers.backends.simulator import SimulatorAdapter

        return SimulatorAdapter(config, model)
    if isinstance(config, OpenAIBackend):
        return OpenAICompatBackend(config, model, max_concurrency)
    if isinstance(config, InjectionSimilarityBackend):
        # Imported here: only a classifier worker loads it (and, through it, torch).
        from workers.backends.similarity import SimilarityClassifierBackend

        return SimilarityClassifierBackend(config, model)
    if isinstance(config, InjectionNgramBackend):
        from workers.backends.ngram_classifier import NgramClassifierBackend

        return NgramClassifierBackend(config, model)
    raise TypeError(f"unknown backend {config!r}")


__all__ = ["Backend", "BackendError", "build_backend"]
