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

from dispatcher.caching.vector_index import Vector
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
# Words whose opposite is one word away in embedding space ("enable" and "disable" score 0.88 with
# all-MiniLM-L6-v2, "less salty" and "more salty" 0.99): a hit needs the same side of each pair.
# General English opposites, not a domain's vocabulary; prefixed opposites (un-, dis-, de-) are
# found by rule below.
_OPPOSITES = (
    ("on", "off"), ("in", "out"), ("into", "out"), ("up", "down"), ("before", "after"), ("enable", "disable"),
    ("add", "remove"), ("increase", "decrease"), ("raise", "lower"), ("more", "less"), ("most", "least"),
    ("buy", "sell"), ("open", "close"), ("start", "stop"), ("begin", "end"), ("import", "export"),
    ("upload", "download"), ("push", "pull"), ("ascending", "descending"), ("maximum", "minimum"),
    ("max", "min"), ("hot", "cold"), ("warm", "cool"), ("early", "late"), ("arrive", "depart"),
    ("arriving", "departing"), ("arrival", "departure"), ("freeze", "thaw"), ("thick", "thin"),
    ("thicker", "thinner"), ("gain", "lose"), ("win", "lose"), ("high", "low"), ("higher", "lower"),
    ("approve", "reject"), ("approve", "refuse"), ("accept", "reject"), ("allow", "deny"),
    ("allow", "forbid"), ("hire", "fire"), ("join", "leave"), ("promote", "demote"), ("lend", "borrow"),
    ("encrypt", "decrypt"), ("compress", "extract"), ("include", "exclude"), ("inside", "outside"),
    ("above", "below"), ("over", "under"), ("first", "last"), ("next", "previous"), ("new", "old"),
    ("young", "old"), ("fast", "slow"), ("faster", "slower"), ("cheap", "expensive"), ("big", "small"),
    ("large", "small"), ("long", "short"), ("longer", "shorter"), ("closer", "farther"),
    ("near", "far"), ("cause", "prevent"), ("cause", "reduce"), ("absorb", "release"), ("send", "receive"),
    ("check-in", "check-out"), ("login", "logout"), ("log-in", "log-out"),
    ("sign-in", "sign-out"), ("true", "false"), ("positive", "negative"), ("plus", "minus"),
    ("buyer", "seller"), ("lender", "borrower"), ("left", "right"), ("north", "south"), ("east", "west"),
    ("with", "without"), ("with", "instead"), ("before", "during"), ("during", "after"),
    ("enter", "exit"), ("enter", "leave"), ("float", "sink"), ("born", "die"), ("live", "die"),
    ("increase", "cut"), ("rise", "fall"), ("win", "lose"), ("pass", "fail"), ("success", "failure"),
    ("always", "never"), ("all", "none"), ("everyone", "nobody"), ("forward", "backward"),
    ("attack", "defend"), ("teacher", "student"), ("parent", "child"), ("employer", "employee"),
)  # fmt: skip
_POLARITY: dict[str, list[tuple[int, str]]] = {}
for _index, (_one, _other) in enumerate(_OPPOSITES):
    _POLARITY.setdefault(_one, []).append((_index, "+"))
    _POLARITY.setdefault(_other, []).append((_index, "-"))
_NEGATING_PREFIXES = ("un", "dis", "de")


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


def conflict(one: str, other: str) -> str | None:
    """Why two similar texts may still mean different things, or None: the same words in another
    order ("A to B" and "B to A": mean-pooled embeddings barely see order, 0.99 here), or opposite
    words ("enable"/"disable", "install"/"uninstall") where the rest is alike."""
    first = [w.lower().replace("’", "'") for w in _WORD.findall(one)]
    second = [w.lower().replace("’", "'") for w in _WORD.findall(other)]
    if sorted(first) == sorted(second) and first != second:
        return "word order"
    words, others = set(first), set(second)
    sides: dict[int, tuple[set[str], set[str]]] = {}
    for word in words | others:
        for pair, sign in _polarity(word):
            mine, theirs = sides.setdefault(pair, (set(), set()))
            if word in words:
                mine.add(sign)
            if word in others:
                theirs.add(sign)
    for pair, (mine, theirs) in sides.items():
        if mine - theirs and theirs - mine:
            return "opposites {}/{}".format(*_OPPOSITES[pair])
        if len(mine) == len(theirs) == 2 and _first_side(first, pair) != _first_side(second, pair):
            return "direction {}/{}".format(*_OPPOSITES[pair])  # "from hot to cold" / "from cold to hot"
    for word in words ^ others:
        for prefix in _NEGATING_PREFIXES:
            stem = word.removeprefix(prefix)
            if stem != word and len(stem) >= 4 and stem in (others if word in words else words):
                return f"{word}/{stem}"
    return None


def _first_side(words: list[str], pair: int) -> str | None:
    for word in words:
        for found, sign in _polarity(word):
            if found == pair:
                return sign
    return None


def _polarity(word: str) -> list[tuple[int, str]]:
    """The opposite pairs a word takes a side in, also inflected ("increases", "died", "cutting")."""
    found = _POLARITY.get(word)
    if found is not None:
        return found
    for suffix in ("s", "es", "d", "ed", "ing", "ting"):
        stem = word.removesuffix(suffix)
        if stem != word and len(stem) >= 3:
            found = _POLARITY.get(stem) or _POLARITY.get(stem + "e")
            if found is not None:
                return found
    return []


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
