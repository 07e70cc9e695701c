"""dispatcher/config/config_store.py on a real nats-server's KV bucket: an invalid revision is never stored,
compare-and-set applies, exactly one of two racing starts stores its configuration, history keeps the
text as applied, followers skip a revision that does not validate."""

from __future__ import annotations

import asyncio

import pytest

from dispatcher.config.config_store import ConfigStore, load_initial
from dispatcher.errors import ConfigError
from schemas.config import ModelbusConfig, ModelConfig
from tests.unit.conftest import Bus, stop_task

ONE = "models:\n  - name: one  # a comment kept as applied\n"
TWO = "models:\n  - name: two\n"
BAD = "models:\n  - name: bad\n    max_concurrency: -3\n"


@pytest.fixture
async def store(bus: Bus) -> ConfigStore:
    return await ConfigStore.open(bus.js, bus.subjects, bus.settings)


async def test_an_invalid_configuration_is_refused_and_nothing_stored(store: ConfigStore) -> None:
    with pytest.raises(ConfigError):
        await store.apply(BAD)
    with pytest.raises(ConfigError):
        await store.apply("models: [", "broken.yaml")
    assert await store.current() is None and await store.history() == []


async def test_revisions_keep_the_text_as_applied(store: ConfigStore) -> None:
    first = await store.apply(ONE)
    second = await store.apply(TWO)
    assert second > first
    current = await store.current()
    assert current is not None and (current.number, current.text) == (second, TWO)
    assert [(r.number, r.text) for r in await store.history()] == [(first, ONE), (second, TWO)]


async def test_apply_after_a_stale_revision_is_refused(store: ConfigStore) -> None:
    first = await store.apply(ONE, after=0)
    with pytest.raises(ConfigError, match="another revision"):
        await store.apply(TWO, after=0)  # someone applied meanwhile
    second = await store.apply(TWO, after=first)
    with pytest.raises(ConfigError, match="another revision"):
        await store.apply(ONE, after=first)
    current = await store.current()
    assert current is not None and current.number == second


async def test_of_two_racing_starts_exactly_one_stores_its_configuration(store: ConfigStore) -> None:
    results = await asyncio.gather(store.apply_first(ONE), store.apply_first(TWO))
    stored = [r for r in results if r is not None]
    assert len(stored) == 1
    current = await store.current()
    assert current is not None and current.text == (ONE if results[0] is not None else TWO)
    with pytest.raises(ConfigError):
        await store.apply_first(BAD)


async def test_followers_get_the_current_revision_then_valid_new_ones(bus: Bus, store: ConfigStore) -> None:
    first = await store.apply(ONE)
    seen: asyncio.Queue[tuple[list[str], int]] = asyncio.Queue()

    async def on_change(config: ModelbusConfig, revision: int) -> None:
        seen.put_nowait(([m.name for m in config.models], revision))

    following = asyncio.ensure_future(store.follow(on_change))
    try:
        assert await asyncio.wait_for(seen.get(), 5) == (["one"], first)
        # A revision written past validation (an old CLI, a hand edit) is refused by followers.
        kv = await bus.js.key_value(bus.subjects.config_bucket)
        await kv.put("current", BAD.encode())
        second = await store.apply(TWO)
        assert await asyncio.wait_for(seen.get(), 5) == (["two"], second)
        assert (store.reloads, store.rejected) == (2, 1)
    finally:
        await stop_task(following)


async def test_start_up_uses_the_applied_revision_else_the_file(bus: Bus, store: ConfigStore) -> None:
    bootstrap = ModelbusConfig(models=[ModelConfig(name="from-file")])
    assert await load_initial(store, bootstrap) == (bootstrap, 0)
    revision = await store.apply(ONE)
    config, number = await load_initial(store, bootstrap)
    assert ([m.name for m in config.models], number) == (["one"], revision)
    kv = await bus.js.key_value(bus.subjects.config_bucket)
    await kv.put("current", BAD.encode())
    assert await load_initial(store, bootstrap) == (bootstrap, 0)  # a bad revision never stops a start
