"""What the semantic cache compares: eligibility, partitions, entity tokens, pairwise conflicts, and
the in-memory index."""

from __future__ import annotations

from typing import Any

import numpy as np

from dispatcher.caching.semantic_keys import conflict, key_tokens, probe_for
from dispatcher.caching.vector_index import VectorIndex, unit
from schemas.config import ModelConfig, SimulatorBackend, VersionConfig
from schemas.envelope import Endpoint
from schemas.traffic import SemanticCacheConfig

CACHE = SemanticCacheConfig(embedding_model="embed")
MODEL = ModelConfig(name="chat", semantic_cache=CACHE)


def _chat(content: Any = "How do I reset my password?", **extra: Any) -> dict[str, Any]:
    return {"model": "chat", "messages": [{"role": "user", "content": content}], **extra}


def _partition(
    payload: dict[str, Any], consumer: str = "a", model: ModelConfig = MODEL, **cache: Any
) -> str | None:
    probe = probe_for(model, CACHE.model_copy(update=cache), Endpoint.CHAT, payload, consumer)
    return probe.partition if probe is not None else None


def test_only_plain_single_answer_text_requests_are_eligible() -> None:
    assert _partition(_chat()) is not None
    assert _partition(_chat(stream=True)) is None
    assert _partition(_chat(n=2)) is None
    assert _partition(_chat(tools=[{"type": "function", "function": {"name": "f"}}])) is None
    image = [{"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": "x"}}]
    assert _partition(_chat(image)) is None
    assert _partition(_chat([{"type": "text", "text": "How do I reset my password?"}])) == _partition(_chat())


def test_partition_holds_everything_but_the_last_user_turn() -> None:
    base = _partition(_chat())
    assert _partition(_chat("What are the steps to reset my password?")) == base
    assert _partition(_chat(), consumer="b") != base  # another consumer: another scope
    assert _partition(_chat(), consumer="b", shared=True) == _partition(_chat(), shared=True)
    assert _partition(_chat(max_tokens=5)) != base  # the rest of the request must be identical
    assert _partition(_chat(stream_options=None, user="someone")) == base  # fields with no meaning
    system = {
        "model": "chat",
        "messages": [{"role": "system", "content": "Be brief."}, _chat()["messages"][0]],
    }
    assert _partition(system) != base
    canary = MODEL.model_copy(update={"versions": [VersionConfig(name="v2")]})
    assert _partition(_chat(), model=canary) != base  # a new deployment starts empty
    other = MODEL.model_copy(update={"backend": SimulatorBackend(ttft_ms=1)})
    assert _partition(_chat(), model=other) != base


def test_numbers_names_and_negation_must_match() -> None:
    assert key_tokens("What is 15% of 80?") != key_tokens("What is 25% of 80?")
    assert key_tokens("What is the capital of Austria?") != key_tokens("What is the capital of Australia?")
    assert key_tokens("Can I go?") != key_tokens("Can I not go?")
    assert key_tokens("Which city is France's capital?") == key_tokens("What's the capital of France?")
    assert key_tokens("How do I reset it in Outlook?") == key_tokens("Resetting it in Outlook: how?")


def test_opposites_and_swapped_order_conflict_but_paraphrases_do_not() -> None:
    assert conflict("How do I enable 2FA?", "How do I disable 2FA?") == "opposites enable/disable"
    assert conflict("Install the driver.", "Uninstall the driver.") == "uninstall/install"
    assert conflict("Can an employer sue an employee?", "Can an employee sue an employer?") == "word order"
    assert conflict("Heat moves from hot to cold.", "Heat moves from cold to hot.") == "word order"
    assert conflict("Interest rate increases?", "Interest rate cuts?") == "opposites increase/cut"
    assert conflict("How do I reverse a list in Python?", "What's the way to reverse a Python list?") is None
    assert conflict("Is it on the list?", "Which list is it?") is None  # one side missing is no conflict


def test_index_finds_the_nearest_live_rows_and_forgets_removed_ones() -> None:
    index = VectorIndex()
    a, b, c = (unit(v) for v in ([1.0, 0.0], [0.8, 0.6], [0.0, 1.0]))
    assert a is not None and b is not None and c is not None
    for key, vector in (("a", a), ("b", b), ("c", c)):
        index.put(key, "p", vector, expires_ms=1000)
    index.put("x", "other", a, expires_ms=1000)
    assert [m.key for m in index.nearest("p", a, now_ms=0, k=2)] == ["a", "b"]
    index.drop("a")
    assert [m.key for m in index.nearest("p", a, now_ms=0, k=3)] == ["b", "c"]
    assert index.nearest("p", a, now_ms=1000) == []  # expired
    assert index.expire(now_ms=1000) == 3 and len(index) == 0
    assert unit([0.0, 0.0]) is None
    many = VectorIndex()
    rows = np.eye(20, dtype=np.float32)
    for i, row in enumerate(rows):
        many.put(f"k{i}", "p", row, 10)
    assert many.nearest("p", rows[13], 0)[0].key == "k13"
