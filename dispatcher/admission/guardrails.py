"""Input guardrails at admission, and the output policy handed to the worker with the request.

Order of checks for a request: identity, RBAC, input guardrails (here), quota, queue. A blocked
prompt therefore costs no quota and never reaches a model. What the guards found goes into the
request's audit row as `<detector>:<action>` entries — kinds and actions, never the matched text.
Every text the model would see is inspected (see dispatcher/admission/prompt.py), not only the
messages' contents.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from dispatcher.admission.classifier import InjectionClassifier
from dispatcher.admission.identity import Identity
from dispatcher.admission.offload import Offload, inspect_payload
from dispatcher.admission.prompt import estimate_prompt_tokens, input_texts
from dispatcher.errors import RETRY_SOON_S, GuardrailUnavailable, PolicyViolation
from dispatcher.guardrails.policies import InputPolicy, OutputPolicy, resolve
from schemas.config import ModelConfig
from schemas.envelope import OutputGuardrails
from schemas.policy import DEFAULT_PHONE_REGIONS

_MEMO_LIMIT = 4096


@dataclass(frozen=True)
class Checked:
    payload: dict[str, Any]  # what to send on (masked where the policy masks)
    changed: bool  # the guards rewrote something
    body: bytes | None  # `payload` as JSON, when known (None: serialize it)
    prompt_tokens: int | None  # estimate_prompt_tokens of `payload`, when the scan counted it


class Guardrails:
    def __init__(self, classifier: InjectionClassifier | None, offload: Offload | None = None) -> None:
        """`offload`: worker processes that scan large payloads off the event loop."""
        self._classifier = classifier
        self._offload = offload
        self._memo: dict[tuple[int, str, str | None], tuple[InputPolicy, OutputGuardrails | None]] = {}

    def policies(
        self, revision: int, model: ModelConfig, identity: Identity
    ) -> tuple[InputPolicy, OutputGuardrails | None]:
        """The input policy and the output spec for `identity` calling `model` under a revision."""
        consumer = identity.settings
        key = (revision, model.name, consumer.name if consumer is not None else None)
        found = self._memo.get(key)
        if found is None:
            inputs, outputs = resolve(model.guardrails, consumer.guardrails if consumer is not None else None)
            found = (inputs, _spec(outputs))
            if len(self._memo) > _MEMO_LIMIT:
                self._memo.clear()
            self._memo[key] = found
        return found

    async def check_input(
        self,
        policy: InputPolicy,
        payload: dict[str, Any] | None,
        events: list[str],
        body: bytes | None = None,
    ) -> Checked:
        """The payload to send (masked where the policy masks), or PolicyViolation if a guard blocks.

        Findings are appended to `events`, each kind once, also when the request is refused.
        `body`: `payload` as JSON, if the caller has it; a large one is scanned in a worker process.
        `payload` None: not parsed yet (a large body), parsed from `body` only if a step needs it.
        """
        found: list[str] = []
        blocked: list[str] = []
        rewritten: dict[str, Any] | None = None
        rewritten_body: bytes | None = None
        prompt: int | None = None
        offload = self._offload
        if policy.inspects and body is not None and offload is not None and offload.wants(len(body)):
            scanned = await offload.scan(policy, body)
            found, blocked, prompt = list(scanned.found), list(scanned.blocked), scanned.prompt_tokens
            if scanned.payload is not None:
                rewritten, rewritten_body = orjson.loads(scanned.payload), scanned.payload
        elif policy.inspects:
            payload = _parsed(payload, body)
            masked, found, blocked = inspect_payload(policy, payload)
            if masked is not payload:
                rewritten = masked
        unavailable = False
        if policy.classifier_injection and policy.classifier and not blocked:
            verdict = None
            if self._classifier is not None:
                payload = _parsed(payload, body)
                verdict = await self._classifier.flags(policy.classifier, "\n".join(input_texts(payload)))
            if verdict is None:
                found.append("injection_classifier:unavailable")
                if policy.classifier_failure == "closed":
                    found.append("injection_classifier:fail_closed")
                    unavailable = True
            elif verdict:
                found.append(f"injection_classifier:{policy.injection}")
                if policy.injection == "block":
                    blocked.append("injection_classifier")
        events.extend(e for e in dict.fromkeys(found) if e not in events)
        if unavailable:
            # Fail closed: refusing is the policy's choice, so it is a 503 to retry, not a 400.
            raise GuardrailUnavailable(
                "the injection classifier could not be reached and this policy fails closed; retry later",
                "guardrail_unavailable",
                retry_after_s=RETRY_SOON_S,
            )
        if blocked:
            raise PolicyViolation(
                f"the request was blocked by the {blocked[0].replace('_', ' ')} guardrail",
                "content_policy_violation",
            )
        changed = rewritten is not None
        if rewritten is None:
            rewritten, rewritten_body = _parsed(payload, body), body
        if policy.max_input_tokens is not None:
            if prompt is None:
                prompt = estimate_prompt_tokens(rewritten)
            if prompt > policy.max_input_tokens:
                raise PolicyViolation(
                    f"the input is about {prompt} tokens, more than the {policy.max_input_tokens} allowed",
                    "context_length_exceeded",
                    "messages",
                )
        return Checked(rewritten, changed, rewritten_body, prompt)


def _parsed(payload: dict[str, Any] | None, body: bytes | None) -> dict[str, Any]:
    if payload is not None:
        return payload
    assert body is not None, "check_input needs the payload or its JSON"
    parsed: dict[str, Any] = orjson.loads(body)
    return parsed


def _spec(policy: OutputPolicy) -> OutputGuardrails | None:
    if not policy.active:
        return None
    regions = list(policy.phone_regions) if policy.phone_regions != DEFAULT_PHONE_REGIONS else None
    return OutputGuardrails(
        pii=policy.pii, pii_kinds=sorted(policy.pii_kinds), sanitize=policy.sanitize, phone_regions=regions
    )
