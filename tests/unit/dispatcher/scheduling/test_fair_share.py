"""The fair-share release order (stride scheduling) and the ready-queue depth, without I/O."""

from __future__ import annotations

from collections import Counter

import pytest
from pydantic import ValidationError

from dispatcher.bus.subjects import Subjects
from dispatcher.scheduling.capacity_view import share_rows, staged_by_queue
from dispatcher.scheduling.fair_share import StrideQueue, next_depth
from dispatcher.telemetry.traffic_window import TrafficWatch
from schemas.capacity import ConsumerShare
from schemas.config import ConsumerConfig, ModelbusConfig
from schemas.envelope import Lane


def _specs(weights: dict[str, float], tiers: dict[str, int] | None = None) -> object:
    return lambda name: (weights.get(name, 1.0), (tiers or {}).get(name, 0))


def test_weights_three_to_one_give_shares_of_75_and_25() -> None:
    queue = StrideQueue()
    queue.update({"a": 5000, "b": 5000}, _specs({"a": 3, "b": 1}))  # type: ignore[arg-type]
    served = Counter(queue.next() for _ in range(2000))
    assert served == {"a": 1500, "b": 500}
    # Short windows are fair too, not just the total: every 4 releases hold one of b's.
    window = [queue.next() for _ in range(400)]
    assert all(window[i : i + 4].count("b") == 1 for i in range(0, 400, 4))


def test_a_newcomer_is_served_next_and_then_shares_instead_of_cashing_in_idle_time() -> None:
    queue = StrideQueue()
    spec = _specs({})
    queue.update({"a": 1000}, spec)  # type: ignore[arg-type]
    for _ in range(500):
        assert queue.next() == "a"
    queue.update({"a": 500, "b": 100}, spec)  # type: ignore[arg-type]
    following = [queue.next() for _ in range(20)]
    assert "b" in following[:2]
    assert Counter(following) == {"a": 10, "b": 10}  # equal weights alternate, no burst of b


def test_an_idle_bucket_rejoins_at_virtual_time() -> None:
    queue = StrideQueue()
    spec = _specs({})
    queue.update({"a": 10, "b": 10}, spec)  # type: ignore[arg-type]
    queue.next(), queue.next()
    queue.update({"a": 300}, spec)  # b went idle
    for _ in range(200):
        queue.next()
    queue.update({"a": 100, "b": 50}, spec)  # type: ignore[arg-type]
    assert Counter(queue.next() for _ in range(10)) == {"a": 5, "b": 5}


def test_a_higher_tier_goes_first_and_a_lower_one_gets_the_rest() -> None:
    queue = StrideQueue()
    queue.update({"gold": 3, "bronze": 5}, _specs({}, {"gold": 1}))  # type: ignore[arg-type]
    assert [queue.next() for _ in range(5)] == ["gold"] * 3 + ["bronze"] * 2


def test_a_stale_count_is_refunded() -> None:
    queue = StrideQueue()
    queue.update({"a": 1, "b": 1}, _specs({}))  # type: ignore[arg-type]
    first = queue.next()
    assert first is not None
    queue.refund(first)
    assert not queue.buckets[first].queued
    assert queue.next() != first and queue.next() is None


def test_ready_depth_grows_only_when_a_worker_starves_and_never_exceeds_the_slots() -> None:
    depth = next_depth(None, 16, 0, starving=False)
    assert depth == 8
    assert next_depth(depth, 16, 0, starving=False) == 8  # drained, but every slot is busy
    assert next_depth(depth, 16, 0, starving=True) == 16
    assert next_depth(16, 16, 0, starving=True) == 16
    assert next_depth(16, 16, 12, starving=False) == 15  # well stocked: shrink
    assert next_depth(1, 2, 1, starving=False) == 1
    assert next_depth(None, 0, 0, starving=False) == 1  # no worker yet: one ready for the first


def test_share_subjects_round_trip_consumer_names_with_dots_and_spaces() -> None:
    subjects = Subjects("mb")
    subject = subjects.share("llama 3.1", "v.2", Lane.BATCH, "team.a b*")
    assert subject.count(".") == 5 and "*" not in subject
    assert staged_by_queue(subjects, {subject: 7, "mb.share.bad": 1}) == {
        ("llama 3.1", "v.2", Lane.BATCH): {"team.a b*": 7}
    }


def test_share_buckets_and_specs_from_the_config() -> None:
    config = ModelbusConfig(
        consumers=[
            ConsumerConfig(name="a", share_weight=3),
            ConsumerConfig(name="b1", share_group="team-b", share_weight=2, share_tier=1),
            ConsumerConfig(name="b2", share_group="team-b", share_weight=2, share_tier=1),
        ]
    )
    assert config.share_bucket("a") == "a" and config.share_bucket("b2") == "team-b"
    assert config.share_bucket("unknown") == "unknown"
    assert config.share_spec("a") == (3, 0) and config.share_spec("team-b") == (2, 1)
    assert config.share_spec("unknown") == (1.0, 0)


def test_members_of_a_share_group_must_agree_on_weight_and_tier() -> None:
    with pytest.raises(ValidationError, match="share group 'g'"):
        ModelbusConfig(
            consumers=[
                ConsumerConfig(name="x", share_group="g", share_weight=2),
                ConsumerConfig(name="y", share_group="g"),
            ]
        )


def test_share_rows_join_staged_buckets_with_served_consumers_summed_into_their_groups() -> None:
    config = ModelbusConfig(
        consumers=[
            ConsumerConfig(name="a"),
            ConsumerConfig(name="b1", share_group="team-b"),
            ConsumerConfig(name="b2", share_group="team-b"),
        ]
    )
    staged = [ConsumerShare(consumer="a", queued=30), ConsumerShare(consumer="team-b", queued=10)]
    rows = share_rows(staged, {"a": 0.5, "b1": 0.2, "b2": 0.2, "c": 0.1}, config)
    assert [(r.consumer, r.queued, r.served_share) for r in rows] == [
        ("a", 30, 0.5),
        ("c", 0, 0.1),
        ("team-b", 10, pytest.approx(0.4)),
    ]
    assert staged[0].served_share is None  # the input rows are not changed


def test_served_shares_count_answers_per_consumer_over_the_window() -> None:
    watch = TrafficWatch(nc=None, subjects=Subjects("mb"))  # type: ignore[arg-type]
    for consumer in ("a", "a", "a", "b"):
        watch.observe("m", 0.1, 1, True, consumer)
    assert watch.served_shares("m") == {"a": 0.75, "b": 0.25}
    assert watch.served_shares("other") == {}
