"""Choosing a pool's member by cost and estimated wait, through admission (a rehearsal: no counters)."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from dispatcher.admission.guardrails import Guardrails
from dispatcher.admission.identity import identity_for
from dispatcher.admission.live_config import LiveConfig
from dispatcher.admission.pipeline import Admission, AuditNotes, Submission
from dispatcher.errors import InvalidRequest
from schemas.config import ConsumerConfig, ModelbusConfig, ModelConfig
from schemas.endpoints import ENDPOINTS
from schemas.envelope import Endpoint
from schemas.traffic import Cost, PoolConfig, RouteNeeds

CONFIG = ModelbusConfig(
    models=[
        ModelConfig(name="cheap", cost=Cost(input_per_1k=0.1, output_per_1k=0.2)),
        ModelConfig(name="middle", cost=Cost(input_per_1k=0.5, output_per_1k=1.0)),
        ModelConfig(name="dear", cost=Cost(input_per_1k=2.0, output_per_1k=4.0)),
    ],
    pools=[PoolConfig(name="chat", members=["dear", "middle", "cheap"])],
    consumers=[
        ConsumerConfig(name="plain", roles=["user"]),
        ConsumerConfig(name="hurried", roles=["user"], route_needs=RouteNeeds(max_wait_ms=500)),
    ],
)


def _route(
    waits: dict[str, float | None] | None, consumer: str = "plain", needs: RouteNeeds | None = None
) -> str:
    admission = Admission(
        LiveConfig(CONFIG), Guardrails(None), None, None, wait_of=waits.get if waits is not None else None
    )
    identity = identity_for(consumer, "k", CONFIG.consumer(consumer), frozenset())
    body = orjson.dumps({"model": "chat", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]})
    admitted = asyncio.run(
        admission.admit(Submission(identity, ENDPOINTS[Endpoint.CHAT], body, needs=needs), AuditNotes())
    )
    assert admitted.model == "chat" and admitted.rule is not None
    assert admitted.rule.startswith(f"pool:chat->{admitted.target.name} (")
    return admitted.target.name


def test_cheapest_member_when_nothing_is_asked() -> None:
    assert _route({"cheap": 9.0, "middle": 0.0, "dear": 0.0}) == "cheap"
    assert _route(None) == "cheap"  # no live view (batch lines): by cost alone


def test_cheapest_member_whose_wait_fits() -> None:
    waits = {"cheap": 3.0, "middle": 0.4, "dear": 0.0}
    assert _route(waits, needs=RouteNeeds(max_wait_ms=1000)) == "middle"
    assert _route(waits, needs=RouteNeeds(max_wait_ms=100)) == "dear"
    assert _route(waits, consumer="hurried") == "middle"  # the consumer's default: 500 ms
    assert _route(waits, consumer="hurried", needs=RouteNeeds(max_wait_ms=5000)) == "cheap"  # header wins


def test_fastest_affordable_member_when_no_wait_fits() -> None:
    waits = {"cheap": 3.0, "middle": 2.0, "dear": 1.0}
    assert _route(waits, needs=RouteNeeds(max_wait_ms=100)) == "dear"
    assert _route(waits, needs=RouteNeeds(max_wait_ms=100, max_cost=0.2)) == "middle"  # dear: 0.4


def test_members_without_live_workers_only_when_none_has_one() -> None:
    assert _route({"cheap": None, "middle": 0.5, "dear": 0.0}) == "middle"
    assert _route({"cheap": None, "middle": None, "dear": None}) == "cheap"


def test_nothing_affordable_is_refused() -> None:
    with pytest.raises(InvalidRequest) as refused:
        _route({"cheap": 0.0, "middle": 0.0, "dear": 0.0}, needs=RouteNeeds(max_cost=0.000001))
    assert refused.value.code == "cost_over_limit"
