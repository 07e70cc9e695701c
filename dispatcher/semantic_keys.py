"""What a semantic-cache lookup compares: the last user turn by meaning, everything else exactly.

A request is eligible only if it is plain text and one answer (no tools, images, audio, streams or
`n > 1`). Its *partition* digests what must be identical for an answer to be reusable: the model's
deployment (versions, weights, backends: a new version starts an empty partition), the embedding
model, the scope (the consumer, unless the cache is shared), the whole request except the last user
turn, and — with `match_entities` — the turn's numbers, names and negation. Within a partition the
turns are compared by cosine similarity of their embeddings.

Why the entity guard: sentence embeddings place "What is 15% of 80?" and "What is 25% of 80?", or
"flights to Paris" and "flights to Rome", closer together than many true paraphrases (measured in
bench/semantic_cache_eval.py), so no single threshold separates them; an exact match on those few
tokens does, for the price of missing paraphrases that spell a name differently.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

import orjson

from dispatcher.vector_index import Vector
from schemas.config import ModelConfig
from schemas.envelope import Endpoint
from schemas.traffic import SemanticCacheConfig

# Fields that never change what the answer means.
_IGNORED = frozenset({"stream", "stream_options", "user", "model", "metadata", "store"})
_INELIGIBLE = frozenset({"tools", "functions", "tool_choice", "function_call", "audio", "modalities"})

_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_WORD = re.compile(r"[^\W\d_][\w'’-]*")
_NEGATIONS = frozenset(
    {"not", "no", "never", "none", "nothing", "nobody", "neither", "nor", "without", "cannot", "can't",
     "cant", "won't", "don't", "doesn't", "didn't", "isn't", "aren't", "wasn't", "shouldn't"}
)  # fmt: skip
_PRONOUN_I = frozenset({"i", "i'm", "i've", "i'd", "i'll"})


@dataclass
class Probe:
    """One request's view for the cache; `vector` is filled by the first lookup and reused to store
    the answer, so a request is embedded at most once."""

    text: str
    partition: str
    embedding_model: str
    vector: Vector | None = None


def turn_text(endpoint: Endpoint, payload: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """(the last user turn, the request without it), or None if the request is not eligible."""
    if any(payload.get(name) for name in _INELIGIBLE) or payload.get("stream"):
        return None
    if payload.get("n") not in (None, 1):
        return None
    if endpoint is Endpoint.COMPLETIONS:
        prompt = payload.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            return None
        return prompt, {**payload, "prompt": None}
    if endpoint is not Endpoint.CHAT:
        return None
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    texts = [_plain(m.get("content")) if isinstance(m, dict) else None for m in messages]
    if any(t is None for t in texts):
        return None  # images, audio or files somewhere in the conversation
    last = next((i for i in range(len(messages) - 1, -1, -1) if messages[i].get("role") == "user"), None)
    if last is None or not str(texts[last]).strip():
        return None
    rest = [*messages[:last], {"role": "user", "content": None}, *messages[last + 1 :]]
    return str(texts[last]), {**payload, "messages": rest}


def _plain(content: Any) -> str | None:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "\n".join(str(p.get("text") or "") for p in content)
    return None


def key_tokens(text: str) -> list[str]:
    """Numbers, names (capitalized words not opening a sentence) and negation, in a stable order."""
    found = {n.replace(",", "") for n in _NUMBER.findall(text)}
    sentence_start = True
    for match in _WORD.finditer(text):
        word = match.group(0)
        lower = word.lower().replace("’", "'")
        if lower in _NEGATIONS or lower.endswith("n't"):
            found.add("~not")
        elif not sentence_start and word[0].isupper() and lower not in _PRONOUN_I:
            found.add(lower.removesuffix("'s"))
        sentence_start = text[match.end() : match.end() + 2].lstrip(" ")[:1] in (".", "?", "!", ":", "\n")
    return sorted(found)


def deployment(model: ModelConfig) -> str:
    """A digest of what serves the model: any change of version, weight or backend changes it."""
    served = model.model_dump(mode="json", include={"versions", "backend"})
    return hashlib.sha256(orjson.dumps(served, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def probe_for(
    model: ModelConfig,
    config: SemanticCacheConfig,
    endpoint: Endpoint,
    payload: dict[str, Any],
    consumer: str,
) -> Probe | None:
    found = turn_text(endpoint, payload)
    if found is None:
        return None
    text, rest = found
    context = {k: v for k, v in rest.items() if k not in _IGNORED}
    parts = {
        "model": model.name,
        "deployment": deployment(model),
        "embedder": config.embedding_model,
        "scope": "*" if config.shared else consumer,
        "request": context,
        "endpoint": endpoint.value,
        "entities": key_tokens(text) if config.match_entities else None,
    }
    digest = hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]
    return Probe(text, digest, config.embedding_model)
