"""What admission hands on: one value holding everything a request needs downstream, and the only
way to build the envelope that carries a request to a worker.

`envelope_for` takes an `Admitted`, nothing else, so an entry point cannot queue a request that did
not pass admission, and the quota hold and the output guardrails cannot be left out by accident:
`RequestEnvelope` has no defaults for them either.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import orjson

from dispatcher.admission.identity import Identity
from dispatcher.admission.quota_gate import Held
from dispatcher.admission.routing import choose_version
from schemas.config import ModelConfig
from schemas.endpoints import ENDPOINTS, EndpointSpec
from schemas.envelope import Endpoint, Lane, OutputGuardrails, RequestEnvelope
from schemas.policy import Operation

# Internal requests act as these consumers (the injection classifier, the semantic cache); neither is
# a configured consumer.
SYSTEM_CONSUMER = "modelbus-guardrails"
CACHE_CONSUMER = "modelbus-cache"


@dataclass(frozen=True)
class Admitted:
    identity: Identity
    spec: EndpointSpec
    model: str  # the name the caller asked for
    target: ModelConfig  # the model that serves it (after routing, degradation or a fallback)
    version: str
    lane: Lane
    rule: str | None  # the routing rule that chose `target`, if one did
    payload: dict[str, Any]  # after input guardrails and normalization: what the model receives
    body: bytes  # `payload` serialized (the client's own bytes when nothing changed)
    stream: bool
    quota: Held
    output_guard: OutputGuardrails | None
    revision: int  # the configuration revision it was admitted under
    operation: Operation  # what RBAC granted: a fallback needs the same on its model

    @property
    def endpoint(self) -> Endpoint:
        return self.spec.endpoint

    def as_task(self, lane: Lane | None = None) -> Admitted:
        """The same request answered later: never streamed (the result is stored whole)."""
        if not self.spec.streams:
            return replace(self, lane=lane or self.lane)
        payload = {k: v for k, v in self.payload.items() if k != "stream_options"}
        payload["stream"] = False
        return replace(
            self, payload=payload, body=orjson.dumps(payload), stream=False, lane=lane or self.lane
        )

    @classmethod
    def internal(
        cls, target: ModelConfig, endpoint: Endpoint, payload: dict[str, Any], consumer: str = SYSTEM_CONSUMER
    ) -> Admitted:
        """A request the gateway makes for itself (a classifier call, a cache's embedding): no consumer
        limits or guards."""
        identity = Identity(consumer, "internal")
        spec = ENDPOINTS[endpoint]
        return cls(
            identity=identity,
            spec=spec,
            model=target.name,
            target=target,
            version=choose_version(target, consumer),
            lane=Lane.INTERACTIVE,
            rule=None,
            payload=payload,
            body=orjson.dumps(payload),
            stream=False,
            quota=Held(None),
            output_guard=None,
            revision=0,
            operation=spec.operation,
        )


def envelope_for(
    admitted: Admitted,
    request_id: str,
    *,
    reply_to: str,
    pulse: bool = False,
    chunks_in_final: bool = False,
    created_ms: int,
    deadline_ms: int,
    traceparent: str | None,
) -> RequestEnvelope:
    """The envelope that takes an admitted request to its target's workers."""
    return RequestEnvelope(
        id=request_id,
        endpoint=admitted.spec.endpoint,
        model=admitted.model,
        target=admitted.target.name,
        version=admitted.version,
        lane=admitted.lane,
        consumer=admitted.identity.consumer,
        key_id=admitted.identity.key_id,
        stream=admitted.stream,
        created_ms=created_ms,
        deadline_ms=deadline_ms,
        reply_to=reply_to,
        pulse=pulse,
        chunks_in_final=chunks_in_final and admitted.stream,
        traceparent=traceparent,
        quota=admitted.quota.take(),
        output_guard=admitted.output_guard,
        payload=admitted.payload,
    )
