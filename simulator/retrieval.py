"""Rerank and tokenizer answers of the simulator, in the shapes llama.cpp and vLLM serve.

The tokenizer is reversible (each token id holds up to three bytes of UTF-8), so detokenize gives
back what tokenize took; rerank scores a document by the share of the query's words it contains.
"""

from __future__ import annotations

import re
from typing import Any

from schemas.envelope import Endpoint
from simulator.engine import SimulatedBadRequest, SimulatedModel

Json = dict[str, Any]
_BYTES_PER_TOKEN = 3
_WORD = re.compile(r"\w+")


def tokenize(text: str) -> list[int]:
    raw = text.encode()
    ids = []
    for start in range(0, len(raw), _BYTES_PER_TOKEN):
        piece = raw[start : start + _BYTES_PER_TOKEN]
        ids.append(len(piece) << 24 | int.from_bytes(piece, "big"))
    return ids


def detokenize(ids: list[int]) -> str:
    raw = b""
    for token in ids:
        length = token >> 24
        if not 1 <= length <= _BYTES_PER_TOKEN or token < 0:
            raise SimulatedBadRequest(f"token {token} is not in the vocabulary")
        raw += (token & 0xFFFFFF).to_bytes(length, "big")
    return raw.decode(errors="replace")


def _score(query: set[str], document: str) -> float:
    words = {w.lower() for w in _WORD.findall(document)}
    return len(query & words) / len(query) if query else 0.0


def answer(model: SimulatedModel, endpoint: Endpoint, payload: Json, name: str) -> Json:
    if endpoint is Endpoint.TOKENIZE:
        ids = tokenize(
            str(payload.get("content") if payload.get("content") is not None else payload["prompt"])
        )
        return {"tokens": ids, "count": len(ids), "max_model_len": model.config.context_length}
    if endpoint is Endpoint.DETOKENIZE:
        text = detokenize([int(t) for t in payload["tokens"]])
        return {"content": text, "prompt": text}
    if endpoint is Endpoint.SCORE:
        return _scores(payload, name)
    query = {w.lower() for w in _WORD.findall(str(payload["query"]))}
    texts = [d if isinstance(d, str) else str(d.get("text", "")) for d in payload["documents"]]
    ranked = sorted(range(len(texts)), key=lambda i: -_score(query, texts[i]))
    top_n = payload.get("top_n") or len(texts)
    results: list[Json] = []
    for index in ranked[:top_n]:
        result: Json = {"index": index, "relevance_score": _score(query, texts[index])}
        if payload.get("return_documents"):
            result["document"] = {"text": texts[index]}
        results.append(result)
    tokens = len(tokenize(str(payload["query"]) + "".join(texts)))
    return {
        "model": name,
        "object": "list",
        "results": results,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def _scores(payload: Json, name: str) -> Json:
    """vLLM's score answer: one `score` per pair, `text_1` repeated when it is a single text."""
    firsts, seconds = payload["text_1"], payload["text_2"]
    seconds = [seconds] if isinstance(seconds, str) else [str(t) for t in seconds]
    firsts = [firsts] if isinstance(firsts, str) else [str(t) for t in firsts]
    if len(firsts) == 1:
        firsts = firsts * len(seconds)
    data = [
        {"index": i, "object": "score", "score": _score({w.lower() for w in _WORD.findall(a)}, b)}
        for i, (a, b) in enumerate(zip(firsts, seconds, strict=True))
    ]
    tokens = len(tokenize("".join(firsts) + "".join(seconds)))
    return {
        "id": f"score-{tokens}",
        "object": "list",
        "model": name,
        "data": data,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
