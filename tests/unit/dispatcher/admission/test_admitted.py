"""dispatcher/admission/admitted.py: the envelope takes the quota hold once (a fallback's envelope
carries none, so a request is not settled twice), a task is never streamed, internal requests carry
no consumer limits or guards."""

from __future__ import annotations

import orjson

from dispatcher.admission.admitted import SYSTEM_CONSUMER, Admitted, envelope_for
from dispatcher.admission.identity import Identity
from dispatcher.admission.quota_gate import Held
from schemas.config import ModelConfig
from schemas.endpoints import ENDPOINTS
from schemas.envelope import Endpoint, Lane, OutputGuardrails, QuotaReservation

MODEL = ModelConfig(name="m", endpoints=[Endpoint.CHAT, Endpoint.EMBEDDINGS])
RESERVED = QuotaReservation(counters=["ns.quota.c._all.tpd.20270115"], tokens=120)


def _admitted(endpoint: Endpoint = Endpoint.CHAT, **payload: object) -> Admitted:
    body = {"model": "m", "messages": [], **payload}
    return Admitted(
        identity=Identity("c", "k1", frozenset({"user"})),
        spec=ENDPOINTS[endpoint],
        model="alias",
        target=MODEL,
        version="default",
        lane=Lane.INTERACTIVE,
        rule="route:r1",
        payload=body,
        body=orjson.dumps(body),
        stream=bool(payload.get("stream")),
        quota=Held(RESERVED),
        output_guard=OutputGuardrails(pii="mask"),
        revision=7,
        operation="chat",
    )


def test_the_envelope_carries_what_admission_decided() -> None:
    admitted = _admitted()
    envelope = envelope_for(admitted, "r1", reply_to="inbox", created_ms=1, deadline_ms=2, traceparent="tp")
    assert (envelope.model, envelope.target, envelope.consumer, envelope.key_id) == ("alias", "m", "c", "k1")
    assert envelope.quota == RESERVED and envelope.output_guard == OutputGuardrails(pii="mask")
    assert (envelope.reply_to, envelope.deadline_ms, envelope.traceparent) == ("inbox", 2, "tp")


def test_only_the_first_envelope_takes_the_reservation() -> None:
    admitted = _admitted()
    first = envelope_for(admitted, "r1", reply_to="i", created_ms=1, deadline_ms=2, traceparent=None)
    fallback = envelope_for(
        admitted, "r1-fallback", reply_to="i", created_ms=1, deadline_ms=2, traceparent=None
    )
    assert first.quota is not None and first.quota.tokens == 120
    # The first worker settles the whole reservation; the fallback's worker must not settle it again.
    assert fallback.quota is not None and fallback.quota.tokens == 0
    assert fallback.quota.counters == RESERVED.counters
    assert admitted.quota.handed_over


def test_a_task_is_never_streamed() -> None:
    task = _admitted(stream=True, stream_options={"include_usage": True}).as_task(Lane.BATCH)
    assert not task.stream and task.lane is Lane.BATCH
    assert orjson.loads(task.body) == {"model": "m", "messages": [], "stream": False}
    assert task.payload == orjson.loads(task.body)
    embeddings = _admitted(Endpoint.EMBEDDINGS).as_task()
    assert embeddings.body == _admitted(Endpoint.EMBEDDINGS).body and embeddings.lane is Lane.INTERACTIVE


def test_an_internal_request_has_no_limits_or_guards() -> None:
    internal = Admitted.internal(MODEL, Endpoint.EMBEDDINGS, {"model": "m", "input": "x"})
    assert internal.identity.consumer == SYSTEM_CONSUMER
    assert internal.quota.take() is None and internal.output_guard is None
    assert internal.body == orjson.dumps({"model": "m", "input": "x"})
