"""Input guardrails at the ingress, and the output policy handed to the worker with the request.

Order of checks for a request: identity, RBAC, input guardrails (here), quota, queue. A blocked
prompt therefore costs no quota and never reaches a model. What the guards found goes into the
request's audit row as `<detector>:<action>` entries — kinds and actions, never the matched text.
"""

from __future__ import annotations

from typing import Any

from dispatcher.guardrails.engine import InputPolicy, OutputPolicy, input_guard, resolve
from ingress.audit import AuditDraft
from ingress.auth import Identity
from ingress.classifier import InjectionClassifier
from ingress.errors import APIError
from ingress.live_config import LiveConfig
from ingress.prompt import estimate_tokens, input_texts, rewrite_texts
from schemas.config import ModelConfig
from schemas.envelope import Endpoint, OutputGuardrails


class Guardrails:
    def __init__(self, live: LiveConfig, classifier: InjectionClassifier | None) -> None:
        self._live = live
        self._classifier = classifier
        self._memo: dict[tuple[int, str, str | None], tuple[InputPolicy, OutputGuardrails | None]] = {}

    def policies(self, model: ModelConfig, identity: Identity) -> tuple[InputPolicy, OutputGuardrails | None]:
        consumer = identity.settings
        key = (self._live.revision, model.name, consumer.name if consumer is not None else None)
        found = self._memo.get(key)
        if found is None:
            inputs, outputs = resolve(model.guardrails, consumer.guardrails if consumer is not None else None)
            found = (inputs, _spec(outputs))
            if len(self._memo) > 4096:
                self._memo.clear()
            self._memo[key] = found
        return found

    async def check_input(
        self, policy: InputPolicy, endpoint: Endpoint, payload: dict[str, Any], draft: AuditDraft | None
    ) -> dict[str, Any] | None:
        """The payload to send (None: unchanged), or APIError 400 if a guard blocks it."""
        events: list[str] = []
        blocked: list[str] = []
        rewritten = payload
        if policy.active:
            guard = input_guard(policy)

            def change(text: str) -> str:
                result = guard.inspect(text)
                events.extend(result.events)
                if result.blocked_by is not None:
                    blocked.append(result.blocked_by)
                return result.text

            rewritten = rewrite_texts(payload, change)
        if policy.injection != "off" and policy.classifier and not blocked and self._classifier is not None:
            verdict = await self._classifier.flags(policy.classifier, "\n".join(input_texts(payload)))
            if verdict is None:
                events.append("injection_classifier:unavailable")
            elif verdict:
                events.append(f"injection_classifier:{policy.injection}")
                if policy.injection == "block":
                    blocked.append("injection_classifier")
        if draft is not None and events:
            draft.policy_actions.extend(dict.fromkeys(events))  # each kind once, in order
        if blocked:
            raise APIError(
                400,
                f"the request was blocked by the {blocked[0].replace('_', ' ')} guardrail",
                "content_policy_violation",
            )
        if policy.max_input_tokens is not None:
            prompt = estimate_tokens(Endpoint.EMBEDDINGS, rewritten)  # prompt side only
            if prompt > policy.max_input_tokens:
                raise APIError(
                    400,
                    f"the input is about {prompt} tokens, more than the {policy.max_input_tokens} allowed",
                    "context_length_exceeded",
                    "messages",
                )
        return rewritten if any(e.endswith(":mask") for e in events) else None


def _spec(policy: OutputPolicy) -> OutputGuardrails | None:
    if not policy.active:
        return None
    return OutputGuardrails(pii=policy.pii, pii_kinds=sorted(policy.pii_kinds), sanitize=policy.sanitize)  # type: ignore[arg-type]
