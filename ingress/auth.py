"""Who is calling: an API key (ours) or a bearer JWT from a configured OpenID Connect issuer, sent
as `Authorization: Bearer ...` or, as Anthropic's clients do, `x-api-key: ...`.

Every failure is a 401 in OpenAI's shape that says what was wrong with the credential but never
echoes it, not even in part. Once the caller is known, the request's audit draft names it, so even a
request refused later (RBAC, guardrails, limits) is audited with its consumer.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from opentelemetry import trace

from dispatcher.admission.identity import Identity, identity_for
from ingress.audit_events import draft_of
from ingress.deps import ServicesDep
from ingress.error_responses import APIError, TokenRejected
from ingress.oidc import looks_like_jwt

_UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}
_TRACER = trace.get_tracer("modelbus.ingress")


def _rejected(message: str, code: str = "invalid_api_key") -> APIError:
    return APIError(401, message, code, headers=_UNAUTHORIZED)


async def authenticate(request: Request, services: ServicesDep) -> Identity:
    """FastAPI dependency: the caller's identity, or 401 in OpenAI's shape."""
    with _TRACER.start_as_current_span("auth"):
        identity = await _authenticate(request, services)
    draft = draft_of(request)
    if draft is not None:
        draft.consumer, draft.key_id = identity.consumer, identity.key_id
    return identity


async def _authenticate(request: Request, services: ServicesDep) -> Identity:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if not header and (api_key := request.headers.get("x-api-key", "").strip()):
        # Anthropic's clients send the key this way (with `anthropic-version`, which needs no answer).
        scheme, token = "bearer", api_key
    if scheme.lower() != "bearer" or not token:
        raise _rejected(
            "missing API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'", "missing_api_key"
        )
    config = services.live.config
    if config.oidc and looks_like_jwt(token):
        try:
            verified = await services.oidc.verify(token)
        except TokenRejected as exc:
            raise _rejected(str(exc)) from None
        settings = config.consumer(verified.consumer)
        if settings is None and verified.issuer.default_consumer is not None:
            settings = config.consumer(verified.issuer.default_consumer)
        return identity_for(verified.consumer, f"jwt:{verified.subject}"[:64], settings, verified.roles)
    found = services.keys.identify(token)
    if found is None:
        raise _rejected("invalid API key (unknown, expired or revoked)")
    consumer, key_id = found
    settings = config.consumer(consumer)
    if settings is None:  # an issued key outlived its consumer's entry in the config
        raise _rejected("invalid API key (its consumer no longer exists)")
    return identity_for(consumer, key_id, settings, frozenset())


Caller = Annotated[Identity, Depends(authenticate)]


async def require_admin(identity: Caller, services: ServicesDep) -> Identity:
    """FastAPI dependency for the admin API: 403 unless a role grants `admin`."""
    if not services.live.authorizer.permits(identity.roles, None, "admin"):
        raise APIError(403, "your roles do not allow admin", "permission_denied")
    return identity


Admin = Annotated[Identity, Depends(require_admin)]


async def require_batch(identity: Caller, services: ServicesDep) -> Identity:
    """FastAPI dependency for uploads and batch creation: 403 unless a role grants `batch` (on
    some model; each line's model is checked again when the file is read)."""
    if not services.live.authorizer.permits(identity.roles, None, "batch"):
        raise APIError(403, "your roles do not allow batch", "permission_denied")
    return identity


BatchCaller = Annotated[Identity, Depends(require_batch)]
