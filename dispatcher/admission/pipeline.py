"""The one admission path. Every way in — a sync call, `Prefer: respond-async`, `POST /v1/tasks`,
each batch line when it runs, a degradation fallback — calls `Admission.admit` (or `retarget` for a
fallback of an admitted request) and gets an `Admitted` or a `Refused` error:

    validate the body → RBAC on the model → the stored conversation a Responses request continues
    → route (a pool's member by cost and wait, or content rules; then the version)
    → input guardrails → token reservation against limits and budgets → Admitted

Identity comes in already established (the ingress checks credentials; a batch line carries the
identity its batch was created under). Nothing here knows HTTP or how the answer travels back.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import orjson

from dispatcher.admission.admitted import Admitted
from dispatcher.admission.guardrails import Guardrails
from dispatcher.admission.identity import Identity
from dispatcher.admission.live_config import LiveConfig, Revision
from dispatcher.admission.offload import Offload
from dispatcher.admission.pools import PoolChoice, WaitOf, choose_member
from dispatcher.admission.prompt import (
    completion_budget,
    completion_reserve,
    estimate_prompt_tokens,
    estimate_tokens,
    normalized,
)
from dispatcher.admission.quota_gate import Held, QuotaGate
from dispatcher.admission.routing import choose_version
from dispatcher.admission.validation import parse
from dispatcher.caching.stored_responses import ResponseStore
from dispatcher.errors import Forbidden, InvalidRequest, NotFound, PolicyViolation
from schemas.config import ModelbusConfig, ModelConfig
from schemas.endpoints import EndpointSpec
from schemas.envelope import Endpoint, Lane
from schemas.policy import Operation
from schemas.traffic import PoolConfig, RouteNeeds


class Notes(Protocol):
    """Where admission records what it learnt, also when it refuses: the audit draft of the request."""

    model_requested: str | None
    policy_actions: list[str]


@dataclass
class AuditNotes:
    """Notes for callers that keep no draft of their own (the batch feeder)."""

    model_requested: str | None = None
    policy_actions: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Body:
    """A validated request body, as admission uses it."""

    model: str
    payload: dict[str, Any] | None  # normalized; None: not parsed yet (a large body), see payload_json
    payload_json: bytes | None  # `payload` as JSON when known (the client's bytes if unchanged)
    prompt_tokens: int | None  # estimate_prompt_tokens(payload), when already counted
    max_output: int | None
    sequences: int
    stream: bool
    continues: bool  # it names a `previous_response_id`


@dataclass(frozen=True)
class Submission:
    identity: Identity
    spec: EndpointSpec
    body: bytes  # the request body as received; validated here
    operation: Operation | None = None  # what RBAC checks; default: the endpoint's own operation
    lane: Lane | None = None  # default: the identity's lane
    # Sync calls of consumers whose over-limit policy is `queue` may wait for room until then.
    wait_until_ms: int | None = None
    needs: RouteNeeds | None = None  # what the request asks of a pool's route (its headers)


class Admission:
    def __init__(
        self,
        live: LiveConfig,
        guardrails: Guardrails,
        quota: QuotaGate | None,
        responses: ResponseStore | None,
        wait_of: WaitOf | None = None,
        offload: Offload | None = None,
    ) -> None:
        """`quota` and `responses` None: a rehearsal (`modelbus config test`), every step but the
        token reservation and reading stored conversations. `offload`: worker processes that
        validate large bodies off the event loop (the guardrails hold the same pool)."""
        self._offload = offload
        self._live = live
        self._guardrails = guardrails
        self._quota = quota
        self._responses = responses
        self._wait_of = wait_of  # estimated queue waits (an ingress's live view); None: unknown

    async def admit(self, submission: Submission, notes: Notes) -> Admitted:
        """Everything the request needs downstream, or a Refused error (nothing reserved)."""
        identity, spec = submission.identity, submission.spec
        body = await self._prepared(submission)
        model = body.model
        notes.model_requested = model
        revision = self._live.current  # one revision for the whole request
        operation = submission.operation or spec.operation
        _authorize(revision.authorizer.permits(identity.roles, model, operation), operation, model)
        # A large body's payload is parsed in the loop only when a step needs the dict, and once: the
        # guardrails' worker process returns the masked payload's JSON (dispatcher/admission/offload.py).
        payload, payload_json, prompt = body.payload, body.payload_json, body.prompt_tokens

        def parsed() -> dict[str, Any]:
            nonlocal payload
            if payload is None:
                assert payload_json is not None
                payload = orjson.loads(payload_json)
            return payload

        if spec.endpoint is Endpoint.RESPONSES and body.continues:
            # The whole conversation goes through the guardrails and counts against the limits: it
            # is what the model will read.
            if self._responses is None:
                raise InvalidRequest("stored conversations are not available here", "unsupported_parameter")
            payload = await self._responses.continued(parsed(), identity.consumer)
            payload_json, prompt = None, None
        max_output, sequences = body.max_output, body.sequences
        pool = revision.config.pool(model)
        rule: str | None = None
        if pool is not None:
            if prompt is None:
                prompt = estimate_prompt_tokens(parsed())
            choice = self._pool_member(revision, pool, submission, operation, prompt, max_output, sequences)
            target, rule = choice.model, choice.reason
        else:
            target = revision.catalog.resolve(model, spec.endpoint)
            if revision.router.has_rules(model):
                routed, rule = revision.router.route(model, parsed(), identity.consumer)
                if rule is not None:
                    target = revision.catalog.resolve(routed, spec.endpoint)
        if rule is not None:
            notes.policy_actions.append(f"route:{rule}")
        input_policy, output_guard = self._guardrails.policies(revision.number, target, identity)
        if input_policy.active or input_policy.max_input_tokens is not None:
            checked = await self._guardrails.check_input(
                input_policy, payload, notes.policy_actions, payload_json
            )
            payload = checked.payload
            if checked.changed:
                payload_json, prompt = checked.body, checked.prompt_tokens
            elif checked.prompt_tokens is not None:
                prompt = checked.prompt_tokens
        payload = parsed()
        tokens = estimate_tokens(spec.endpoint, payload, max_output, sequences, prompt)
        reservation = None
        if self._quota is not None:
            reservation = await self._quota.admit(identity, model, tokens, submission.wait_until_ms)
        return Admitted(
            identity=identity,
            spec=spec,
            model=model,
            target=target,
            version=choose_version(target, identity.consumer),
            lane=submission.lane or identity.lane,
            rule=rule,
            payload=payload,
            body=payload_json if payload_json is not None else orjson.dumps(payload),
            stream=body.stream,
            quota=Held(reservation),
            output_guard=output_guard,
            revision=revision.number,
            operation=operation,
        )

    async def _prepared(self, submission: Submission) -> _Body:
        """The validated body; a large one validated in a worker process (dispatcher/admission/offload.py)."""
        spec, body = submission.spec, submission.body
        if self._offload is not None and self._offload.wants(len(body)):
            prepared = await self._offload.prepare(spec.path, body)
            payload_json = body if prepared.payload is None else prepared.payload
            return _Body(
                prepared.model,
                None,
                payload_json,
                prepared.prompt_tokens,
                prepared.max_output,
                prepared.sequences,
                prepared.stream,
                prepared.continues,
            )
        parsed = parse(spec.schema, body)
        raw: dict[str, Any] = orjson.loads(body)
        payload = normalized(parsed, raw)
        max_output, sequences = completion_budget(parsed)
        return _Body(
            parsed.model,  # type: ignore[attr-defined]  # every inference schema has one
            payload,
            body if payload is raw else None,
            None,
            max_output,
            sequences,
            bool(getattr(parsed, "stream", False)),
            bool(payload.get("previous_response_id")),
        )

    async def retarget(self, admitted: Admitted, target: ModelConfig, notes: Notes) -> Admitted | None:
        """The same request for another model (a degradation fallback), held to that model's RBAC
        and guardrails; None if they do not allow it. The quota hold stays the same: the request was
        counted once and is settled by whichever worker serves it."""
        identity = admitted.identity
        revision = self._live.current
        if not target.serves(admitted.spec.endpoint):
            return None
        if not revision.authorizer.permits(identity.roles, target.name, admitted.operation):
            notes.policy_actions.append(f"fallback_denied:{target.name}")
            return None
        input_policy, output_guard = self._guardrails.policies(revision.number, target, identity)
        payload = admitted.payload
        body = admitted.body
        if input_policy.active or input_policy.max_input_tokens is not None:
            try:
                checked = await self._guardrails.check_input(
                    input_policy, payload, notes.policy_actions, admitted.body
                )
            except PolicyViolation:
                notes.policy_actions.append(f"fallback_refused:{target.name}")
                return None
            if checked.changed:
                payload = checked.payload
                body = checked.body if checked.body is not None else orjson.dumps(payload)
        return replace(
            admitted,
            target=target,
            version=choose_version(target, identity.consumer),
            payload=payload,
            body=body,
            output_guard=output_guard,
            revision=revision.number,
        )

    def _pool_member(
        self,
        revision: Revision,
        pool: PoolConfig,
        submission: Submission,
        operation: Operation,
        prompt: int,
        max_output: int | None,
        sequences: int,
    ) -> PoolChoice:
        """The member of `pool` that serves this request: among those the caller may use here, the
        cheapest whose estimated wait fits what the request (or its consumer) asks."""
        identity, endpoint = submission.identity, submission.spec.endpoint
        members = [
            m
            for m in (revision.catalog.get(name) for name in pool.members)
            if m is not None
            and m.serves(endpoint)
            and revision.authorizer.permits(identity.roles, m.name, operation)
        ]
        if not members:
            raise NotFound(
                f"the pool {pool.name!r} has no model you may use on the {endpoint.value} endpoint",
                "model_not_found",
                "model",
            )
        defaults = identity.settings.route_needs if identity.settings is not None else None
        asked = submission.needs or RouteNeeds()
        needs = RouteNeeds(
            max_wait_ms=asked.max_wait_ms or (defaults.max_wait_ms if defaults else None),
            max_cost=asked.max_cost
            if asked.max_cost is not None
            else (defaults.max_cost if defaults else None),
        )
        output = 0 if endpoint is Endpoint.EMBEDDINGS else completion_reserve(max_output, sequences)
        return choose_member(pool, members, needs, prompt, output, self._wait_of)

    @property
    def config(self) -> ModelbusConfig:
        return self._live.config

    def release(self, admitted: Admitted) -> None:
        """Give back a reservation no worker took (a cache hit, a replayed task, an error)."""
        if self._quota is not None:
            self._quota.release(admitted.quota)

    def refund(self, admitted: Admitted) -> None:
        """Give back a reservation whose envelope was dropped as a duplicate (or never published)."""
        if self._quota is not None:
            self._quota.refund(admitted.quota)


def _authorize(permitted: bool, operation: Operation, model: str) -> None:
    if not permitted:
        raise Forbidden(f"your roles do not allow {operation} on the model {model!r}", "permission_denied")
