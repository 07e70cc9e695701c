"""Checking a candidate configuration's behaviour before it is applied, without sending traffic.

Each assertion (schemas/config_tests.py) becomes a request of its consumer that goes through the
real admission pipeline — validation, RBAC, pools and routing rules, input guardrails — built on
the candidate configuration, with everything but the token reservation (no counters, no bus). So an
assertion fails exactly when the gateway would behave otherwise. The injection classifier, a model
call, is not made; the assertions concern configuration, not models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from dispatcher.admission.guardrails import Guardrails
from dispatcher.admission.identity import identity_for
from dispatcher.admission.live_config import LiveConfig
from dispatcher.admission.pipeline import Admission, AuditNotes, Submission
from dispatcher.admission.prompt import input_texts
from dispatcher.errors import Refused
from dispatcher.guardrails.pii import detect_pii
from schemas.config import ConsumerConfig, ModelbusConfig
from schemas.config_tests import PII_SAMPLE, ConfigAssertion, ConfigTests
from schemas.endpoints import ENDPOINTS
from schemas.envelope import Endpoint
from schemas.policy import Limits

_NEUTRAL = "What are the opening hours of the office?"


@dataclass(frozen=True, slots=True)
class Result:
    assertion: ConfigAssertion
    passed: bool
    detail: str  # what the gateway did instead, or confirmation


async def run_assertions(config: ModelbusConfig, tests: ConfigTests) -> list[Result]:
    rehearsal = Admission(LiveConfig(config), Guardrails(None), None, None)
    return [await _check(rehearsal, config, assertion) for assertion in tests.assertions]


async def _check(rehearsal: Admission, config: ModelbusConfig, assertion: ConfigAssertion) -> Result:
    consumer = config.consumer(assertion.consumer)
    if consumer is None:
        return Result(assertion, False, f"no consumer named {assertion.consumer!r}")
    expectation = assertion.expectation
    if expectation.startswith("max_"):
        return _limit(assertion, consumer, expectation)
    prompt = assertion.prompt or (PII_SAMPLE if expectation == "masks_pii" else _NEUTRAL)
    identity = identity_for(consumer.name, "config-test", consumer, frozenset())
    spec = ENDPOINTS[assertion.endpoint]
    try:
        admitted = await rehearsal.admit(
            Submission(identity, spec, orjson.dumps(_body(assertion, prompt))), AuditNotes()
        )
    except Refused as exc:
        refused = f"refused ({exc.status} {exc.code}: {exc.message})"
        if expectation == "refused":
            return Result(assertion, bool(assertion.refused), refused)
        return Result(assertion, False, refused)
    served = f"admitted, served by {admitted.target.name}"
    if expectation == "refused":
        return Result(assertion, not assertion.refused, served)
    if expectation == "reaches":
        return Result(assertion, admitted.target.name == assertion.reaches, served)
    seen = "\n".join(input_texts(admitted.payload))
    leaked = [part for part in _pii_parts(prompt) if part in seen]
    masked = not leaked
    detail = "masked" if masked else f"reaches the model unmasked: {', '.join(leaked)}"
    return Result(assertion, masked == assertion.masks_pii, detail)


def _body(assertion: ConfigAssertion, prompt: str) -> dict[str, Any]:
    if assertion.endpoint is Endpoint.EMBEDDINGS:
        return {"model": assertion.model, "input": prompt}
    if assertion.endpoint is Endpoint.COMPLETIONS:
        return {"model": assertion.model, "prompt": prompt, "stream": "stream" in assertion.features}
    body: dict[str, Any] = {"model": assertion.model, "messages": [{"role": "user", "content": prompt}]}
    if "tools" in assertion.features:
        body["tools"] = [
            {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
        ]
    if "json_mode" in assertion.features:
        body["response_format"] = {"type": "json_object"}
    if "stream" in assertion.features:
        body["stream"] = True
    return body


def _pii_parts(prompt: str) -> list[str]:
    """The prompt's PII values (found by the guardrails' own detectors) as they are written."""
    return [prompt[f.start : f.end] for f in detect_pii(prompt)]


def _limit(assertion: ConfigAssertion, consumer: ConsumerConfig, expectation: str) -> Result:
    """The strictest limit of this kind that applies (all models, or the named model) is at most N."""
    field = expectation.removeprefix("max_")
    scopes: list[Limits | None] = [consumer.limits]
    if assertion.model is not None:
        scopes.append(consumer.model_limits.get(assertion.model))
    values = [getattr(limits, field) for limits in scopes if limits is not None and getattr(limits, field)]
    wanted = getattr(assertion, expectation)
    if not values:
        return Result(assertion, False, f"no {field} limit applies")
    strictest = min(values)
    return Result(assertion, strictest <= wanted, f"{field} is {strictest:g}")
