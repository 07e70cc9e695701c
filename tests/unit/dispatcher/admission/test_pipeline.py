"""dispatcher/admission/pipeline.py, the one admission path, with real JetStream counters behind its
quota gate: each refusal reserves nothing, what it admits carries the reservation into the envelope,
the client's bytes pass untouched unless a guardrail changed them, and fallbacks are held to the
fallback model's RBAC and guardrails."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import nats
import orjson
import pytest

from dispatcher.admission.admitted import envelope_for
from dispatcher.admission.guardrails import Guardrails
from dispatcher.admission.identity import Identity, identity_for
from dispatcher.admission.live_config import LiveConfig
from dispatcher.admission.pipeline import Admission, AuditNotes, Submission
from dispatcher.admission.quota_gate import QuotaGate
from dispatcher.bus.bus_settings import BusSettings
from dispatcher.bus.subjects import Subjects
from dispatcher.errors import Forbidden, InvalidRequest, NotFound, OverLimit, PolicyViolation
from dispatcher.policy.quotas import Limiter, QuotaLedger
from modelbus.embedded_nats import NatsServer
from schemas.config import ConsumerConfig, ModelbusConfig, ModelConfig
from schemas.endpoints import ENDPOINTS
from schemas.envelope import Endpoint, Lane
from schemas.policy import GuardrailsConfig, Limits, RoleConfig

CHAT = ENDPOINTS[Endpoint.CHAT]
CONFIG = ModelbusConfig(
    models=[
        ModelConfig(name="m"),
        ModelConfig(name="private", fallbacks=["m"]),
        ModelConfig(name="strict", guardrails=GuardrailsConfig(pii="block")),
        ModelConfig(name="masked", guardrails=GuardrailsConfig(pii="mask")),
        ModelConfig(name="embedder", endpoints=[Endpoint.EMBEDDINGS]),
    ],
    roles=[RoleConfig(name="public", models=["m", "strict", "masked", "embedder"])],
    consumers=[
        ConsumerConfig(name="alice", roles=["user"], limits=Limits(tokens_per_day=10_000)),
        ConsumerConfig(name="bob", roles=["public"], lane=Lane.BATCH),
        ConsumerConfig(name="carol", roles=["user"], limits=Limits(tokens_per_day=10)),
        ConsumerConfig(name="nobody"),
    ],
)


@dataclass
class Setup:
    admission: Admission
    ledger: QuotaLedger
    subjects: Subjects

    async def used(self, consumer: str) -> int:
        """Tokens held against a consumer's day budget (all reservations are in one UTC day here)."""
        await self.ledger.drain()
        day = time.strftime("%Y%m%d", time.gmtime())
        return await self.ledger.value(self.subjects.quota(consumer, None, "tpd", day))


@pytest.fixture
async def setup(nats_server: NatsServer) -> AsyncIterator[Setup]:
    nc = await nats.connect(nats_server.url)
    subjects = Subjects("a" + uuid.uuid4().hex[:8])
    ledger = await QuotaLedger.open(nc, subjects, BusSettings(nats_url=nats_server.url))
    gate = QuotaGate(Limiter(ledger, subjects), ledger)
    yield Setup(Admission(LiveConfig(CONFIG), Guardrails(None), gate, None), ledger, subjects)
    await nc.close()


def _who(consumer: str) -> Identity:
    return identity_for(consumer, "key-" + consumer, CONFIG.consumer(consumer), frozenset())


def _chat(model: str = "m", content: str = "hello there", **extra: object) -> bytes:
    return orjson.dumps({"model": model, "messages": [{"role": "user", "content": content}], **extra})


async def _admit(setup: Setup, consumer: str, body: bytes, **submission: object):  # type: ignore[no-untyped-def]
    notes = AuditNotes()
    admitted = await setup.admission.admit(Submission(_who(consumer), CHAT, body, **submission), notes)  # type: ignore[arg-type]
    return admitted, notes


async def test_an_admitted_request_holds_its_tokens_until_an_envelope_takes_them(setup: Setup) -> None:
    admitted, notes = await _admit(setup, "alice", _chat(max_tokens=50))
    assert notes.model_requested == "m"
    assert (admitted.target.name, admitted.version, admitted.lane) == ("m", "default", Lane.INTERACTIVE)
    held = await setup.used("alice")
    assert held >= 50  # the prompt estimate plus max_tokens
    envelope = envelope_for(admitted, "r1", reply_to="x", created_ms=0, deadline_ms=1, traceparent=None)
    assert envelope.quota is not None and envelope.quota.tokens == held
    assert (envelope.consumer, envelope.key_id) == ("alice", "key-alice")
    setup.admission.release(admitted)  # the envelope took it: the worker settles, not the gate
    assert await setup.used("alice") == held


async def test_a_reservation_no_envelope_took_is_given_back(setup: Setup) -> None:
    admitted, _ = await _admit(setup, "alice", _chat(max_tokens=50))
    assert await setup.used("alice") > 0
    setup.admission.release(admitted)  # e.g. answered from the cache
    assert await setup.used("alice") == 0


async def test_the_client_bytes_are_passed_on_untouched(setup: Setup) -> None:
    body = b'{ "model" : "m", "messages": [{"role": "user", "content": "caf\\u00e9"}], "max_tokens": 5 }'
    admitted, _ = await _admit(setup, "alice", body)
    assert admitted.body == body  # not re-serialized: the bus carries what the client sent


@pytest.mark.parametrize(
    ("consumer", "body", "error", "code"),
    [
        ("alice", b"{not json", InvalidRequest, None),
        ("alice", _chat(max_tokens=-1), InvalidRequest, None),
        ("alice", _chat("no-such-model"), NotFound, "model_not_found"),
        ("alice", _chat("embedder"), NotFound, "model_not_found"),  # not on this endpoint
        ("nobody", _chat(), Forbidden, "permission_denied"),
        ("bob", _chat("private"), Forbidden, "permission_denied"),
        ("alice", _chat("strict", "write to jane.doe@example.com"), PolicyViolation, None),
        ("carol", _chat(max_tokens=500), OverLimit, "insufficient_quota"),
    ],
)
async def test_a_refused_request_reserves_nothing(
    setup: Setup, consumer: str, body: bytes, error: type[Exception], code: str | None
) -> None:
    with pytest.raises(error) as refused:
        await _admit(setup, consumer, body)
    if code is not None:
        assert refused.value.code == code  # type: ignore[attr-defined]
    assert await setup.used(consumer) == 0


async def test_continuing_a_stored_conversation_needs_the_response_store(setup: Setup) -> None:
    body = orjson.dumps({"model": "m", "input": "and then?", "previous_response_id": "resp_1"})
    submission = Submission(_who("alice"), ENDPOINTS[Endpoint.RESPONSES], body)
    with pytest.raises(InvalidRequest) as refused:
        await setup.admission.admit(submission, AuditNotes())
    assert refused.value.code == "unsupported_parameter"
    assert await setup.used("alice") == 0


async def test_notes_name_the_model_even_when_refused(setup: Setup) -> None:
    notes = AuditNotes()
    with pytest.raises(Forbidden):
        await setup.admission.admit(Submission(_who("bob"), CHAT, _chat("private")), notes)
    assert notes.model_requested == "private"


async def test_a_masking_guardrail_changes_the_body_sent_on(setup: Setup) -> None:
    admitted, notes = await _admit(setup, "alice", _chat("masked", "mail jane.doe@example.com now"))
    assert b"jane.doe@example.com" not in admitted.body
    assert orjson.loads(admitted.body) == admitted.payload
    assert any("pii" in action for action in notes.policy_actions), notes.policy_actions


async def test_the_lane_is_the_consumers_unless_the_caller_says(setup: Setup) -> None:
    admitted, _ = await _admit(setup, "bob", _chat())
    assert admitted.lane is Lane.BATCH
    admitted, _ = await _admit(setup, "bob", _chat(), lane=Lane.INTERACTIVE)
    assert admitted.lane is Lane.INTERACTIVE


async def test_a_fallback_keeps_the_same_hold_and_obeys_the_fallbacks_policy(setup: Setup) -> None:
    admitted, _ = await _admit(setup, "alice", _chat("private", "mail jane.doe@example.com", max_tokens=5))
    held = await setup.used("alice")
    notes = AuditNotes()
    fallback = await setup.admission.retarget(admitted, CONFIG.model("m"), notes)  # type: ignore[arg-type]
    assert fallback is not None and fallback.target.name == "m" and fallback.quota is admitted.quota
    # A fallback whose guardrails block the prompt is not taken.
    refused = await setup.admission.retarget(admitted, CONFIG.model("strict"), notes)  # type: ignore[arg-type]
    assert refused is None and "fallback_refused:strict" in notes.policy_actions
    # Nor one the caller's roles do not reach, nor one that does not serve the endpoint.
    bob, _ = await _admit(setup, "bob", _chat("m"))
    assert await setup.admission.retarget(bob, CONFIG.model("private"), notes) is None  # type: ignore[arg-type]
    assert "fallback_denied:private" in notes.policy_actions
    assert await setup.admission.retarget(admitted, CONFIG.model("embedder"), notes) is None  # type: ignore[arg-type]
    assert await setup.used("alice") == held  # counted once, whatever serves it
