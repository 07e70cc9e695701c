"""dispatcher/caching/response_cache.py on a real KV bucket: the key ignores only what does not change an
answer's meaning, and includes the model."""

from __future__ import annotations

from dispatcher.caching.response_cache import ResponseCache, cache_key
from tests.unit.conftest import Bus

ASK = {"messages": [{"role": "user", "content": "hi"}], "temperature": 0}


def test_transport_fields_do_not_change_the_key() -> None:
    plain = cache_key("m", ASK)
    assert cache_key("m", {**ASK, "stream": True, "stream_options": {"include_usage": True}}) == plain
    assert cache_key("m", {**ASK, "user": "someone"}) == plain
    assert cache_key("m", dict(reversed(list(ASK.items())))) == plain


def test_the_model_and_every_meaningful_field_change_the_key() -> None:
    plain = cache_key("m", ASK)
    assert cache_key("other", ASK) != plain
    assert cache_key("m", {**ASK, "model": "other"}) == plain  # the target model decides, not the body's
    assert cache_key("m", {**ASK, "temperature": 1}) != plain
    assert cache_key("m", {**ASK, "messages": [{"role": "user", "content": "ho"}]}) != plain


async def test_an_answer_is_served_for_the_same_question_only(bus: Bus) -> None:
    cache = await ResponseCache.open(bus.js, bus.subjects, bus.settings)
    assert await cache.get("m", ASK) is None
    await cache.put("m", ASK, b'{"answer":1}')
    assert await cache.get("m", {**ASK, "stream": True}) == b'{"answer":1}'
    assert await cache.get("m", {**ASK, "temperature": 1}) is None
    assert cache.hits == 1
