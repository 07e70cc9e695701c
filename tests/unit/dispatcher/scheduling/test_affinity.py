"""Prefix-affinity keys and rendezvous homes (dispatcher/scheduling/affinity.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dispatcher.bus.subjects import Subjects
from dispatcher.scheduling.affinity import (
    assign_homes,
    bucket_of,
    home_buckets,
    home_worker,
    prompt_head,
    request_bucket,
)
from schemas.envelope import Endpoint, Lane

SYSTEM = "You are the support agent of ACME. " * 40


def _chat(system: str, user: str) -> dict[str, object]:
    return {"messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]}


def test_same_system_prompt_with_other_user_turns_lands_in_one_bucket() -> None:
    buckets = {
        request_bucket(Endpoint.CHAT, Lane.INTERACTIVE, _chat(SYSTEM, turn), 4096, 16)
        for turn in ("hi", "where is my order?", "cancel it", "x" * 5000)
    }
    assert len(buckets) == 1 and None not in buckets


def test_completions_use_the_head_of_the_prompt() -> None:
    heads = {
        request_bucket(Endpoint.COMPLETIONS, Lane.INTERACTIVE, {"prompt": SYSTEM + q}, 1000, 16)
        for q in ("Q: one", "Q: two")
    }
    assert len(heads) == 1


def test_the_last_message_is_not_part_of_the_head_but_earlier_turns_are() -> None:
    turns = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": [{"type": "text", "text": "answer"}]},
        {"role": "user", "content": "second"},
    ]
    head = prompt_head(Endpoint.CHAT, {"messages": turns}, 1000)
    assert head is not None and "first" in head and "answer" in head and "second" not in head
    # A lone user message with no system prompt is its own head.
    assert prompt_head(Endpoint.CHAT, {"messages": [{"role": "user", "content": "hello"}]}, 1000)


def test_window_bounds_the_head() -> None:
    short = prompt_head(Endpoint.CHAT, _chat(SYSTEM, "u"), 100)
    assert short is not None and len(short) == 100


def test_distinct_prompts_spread_over_buckets() -> None:
    used = {bucket_of(f"system prompt number {n}", 16) for n in range(200)}
    assert len(used) == 16


def test_batch_lane_and_promptless_endpoints_stay_fifo() -> None:
    chat = _chat(SYSTEM, "u")
    assert request_bucket(Endpoint.CHAT, Lane.BATCH, chat, 1000, 16) is None
    assert request_bucket(Endpoint.EMBEDDINGS, Lane.INTERACTIVE, {"input": "x"}, 1000, 16) is None
    assert request_bucket(Endpoint.COMPLETIONS, Lane.INTERACTIVE, {"prompt": ["a", "b"]}, 1000, 16) is None


def test_bucket_subjects_are_one_level_below_the_lane_and_parse_back() -> None:
    s = Subjects("mb")
    fifo = s.request("a.b", "v1", Lane.INTERACTIVE)
    bucket = s.affinity_request("a.b", "v1", 7)
    assert bucket.startswith(fifo + ".") and bucket.count(".") == fifo.count(".") + 1
    assert Subjects.affinity_bucket_of(bucket) == 7 and Subjects.affinity_bucket_of(fifo) is None
    assert Subjects.affinity_bucket_of(s.affinity_bell("a.b", "v1", 3)) == 3
    names = {s.affinity_consumer("a.b", "v1", k) for k in range(16)} | {s.consumer("a.b", "v1")}
    assert len(names) == 17


workers_st = st.lists(st.text(min_size=1, max_size=12), min_size=2, max_size=8, unique=True)


@given(workers_st, st.integers(min_value=1, max_value=64), st.data())
def test_a_worker_leaving_moves_only_its_own_buckets(
    workers: list[str], buckets: int, data: st.DataObject
) -> None:
    gone = data.draw(st.sampled_from(workers))
    before = {k: home_worker(k, workers) for k in range(buckets)}
    after = {k: home_worker(k, [w for w in workers if w != gone]) for k in range(buckets)}
    moved = {k for k in range(buckets) if before[k] != after[k]}
    assert moved == {k for k in range(buckets) if before[k] == gone}


@given(workers_st, st.integers(min_value=1, max_value=64))
def test_home_sets_partition_the_buckets(workers: list[str], buckets: int) -> None:
    homes = [home_buckets(w, workers, buckets) for w in workers]
    assert sum(len(h) for h in homes) == buckets
    assert set().union(*homes) == set(range(buckets))


@given(workers_st, st.text(min_size=1, max_size=12), st.integers(min_value=1, max_value=64))
def test_a_worker_joining_takes_buckets_only_for_itself(workers: list[str], new: str, buckets: int) -> None:
    before = {k: home_worker(k, workers) for k in range(buckets)}
    after = {k: home_worker(k, [*workers, new]) for k in range(buckets)}
    assert all(after[k] in (before[k], new) for k in range(buckets))


active_st = st.sets(st.integers(min_value=0, max_value=63), max_size=40)


@given(workers_st, st.integers(min_value=1, max_value=64), active_st)
def test_active_buckets_are_spread_with_a_bounded_load(
    workers: list[str], buckets: int, active: set[int]
) -> None:
    homes = assign_homes(workers, buckets, active)
    assert set(homes) == set(range(buckets)) and set(homes.values()) <= set(workers)
    hot = [k for k in active if k < buckets]
    cap = -(-len(hot) // len(workers))
    for w in workers:
        assert sum(homes[k] == w for k in hot) <= cap


@given(workers_st, st.integers(min_value=1, max_value=64), active_st)
def test_every_worker_computes_the_same_map(workers: list[str], buckets: int, active: set[int]) -> None:
    maps = [
        assign_homes(list(reversed(workers)), buckets, sorted(active)),
        assign_homes(workers, buckets, active),
    ]
    assert maps[0] == maps[1]
    partition = [home_buckets(w, workers, buckets, active) for w in workers]
    assert sum(len(h) for h in partition) == buckets


@given(workers_st, st.integers(min_value=1, max_value=64))
def test_with_no_active_bucket_homes_are_plain_rendezvous(workers: list[str], buckets: int) -> None:
    assert assign_homes(workers, buckets) == {k: home_worker(k, workers) for k in range(buckets)}


def test_eight_hot_prompts_split_four_and_four_where_plain_rendezvous_would_not() -> None:
    """The bench's case: 8 prompts, 16 buckets, 2 workers. Some 8 buckets split unevenly under plain
    rendezvous (found here, not assumed); bounded loads split every such set 4/4."""
    workers = ["w0", "w1"]
    uneven = None
    for start in range(16):
        hot = {(start + 2 * i) % 16 for i in range(8)} if start % 2 else set(range(start, start + 8))
        hot = {k % 16 for k in hot}
        plain = [sum(home_worker(k, workers) == w for k in hot) for w in workers]
        if max(plain) >= 6:
            uneven = hot
        homes = assign_homes(workers, 16, hot)
        assert sorted(sum(homes[k] == w for k in hot) for w in workers) == [4, 4]
    assert uneven is not None, "every tried set was even under plain rendezvous: the test proves nothing"


@given(workers_st, st.integers(min_value=1, max_value=64), active_st, st.data())
def test_a_leaving_workers_buckets_go_to_live_workers_and_idle_ones_stay_put(
    workers: list[str], buckets: int, active: set[int], data: st.DataObject
) -> None:
    gone = data.draw(st.sampled_from(workers))
    rest = [w for w in workers if w != gone]
    before, after = assign_homes(workers, buckets, active), assign_homes(rest, buckets, active)
    assert gone not in after.values()
    idle = [k for k in range(buckets) if k not in active]
    assert all(after[k] == before[k] for k in idle if before[k] != gone)


@given(workers_st, active_st, st.integers(min_value=0, max_value=63))
def test_a_bucket_turning_active_moves_no_held_bucket(workers: list[str], active: set[int], new: int) -> None:
    """Sticky: once the workers report their homes, a new active bucket is placed around them."""
    before = assign_homes(workers, 64, active)
    held = {w: [k for k in active if before[k] == w] for w in workers}
    after = assign_homes(workers, 64, active | {new}, held)
    # Each worker held at most the old cap, which the new one is not below: every claim fits.
    assert [k for k in active if after[k] != before[k]] == []


def test_held_buckets_stay_even_where_bucket_order_would_reshuffle_them() -> None:
    workers = ["w0", "w1"]
    first = assign_homes(workers, 16, set(range(6)))
    held = {w: [k for k in range(6) if first[k] == w] for w in workers}
    for new in range(6, 16):
        again = assign_homes(workers, 16, {*range(6), new}, held)
        assert all(again[k] == first[k] for k in range(6))


@given(workers_st, active_st, st.data())
def test_with_held_homes_a_leaver_moves_only_its_own_active_buckets(
    workers: list[str], active: set[int], data: st.DataObject
) -> None:
    gone = data.draw(st.sampled_from(workers))
    rest = [w for w in workers if w != gone]
    before = assign_homes(workers, 64, active)
    held = {w: sorted(k for k in active if before[k] == w) for w in rest}
    after = assign_homes(rest, 64, active, held)
    assert all(after[k] == before[k] for k in active if before[k] != gone)
    # A heartbeat later the heirs also claim what they inherited (newest last): still nobody's own moves.
    held = {w: held[w] + sorted(k for k in active if before[k] == gone and after[k] == w) for w in rest}
    again = assign_homes(rest, 64, active, held)
    assert all(again[k] == before[k] for k in active if before[k] != gone)
