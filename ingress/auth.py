"""Who is calling: an API key (ours) or a bearer JWT from a configured OpenID Connect issuer.

Every failure is a 401 in OpenAI's shape that says what was wrong with the credential but never
echoes it, not even in part.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from opentelemetry import trace

from ingress.errors import APIError
from ingress.live_config import LiveConfig
from ingress.oidc import OidcVerifier, TokenRejected, looks_like_jwt
from schemas.config import ConsumerConfig
from schemas.envelope import Lane
from schemas.policy import Operation


@dataclass(frozen=True, slots=True)
class Identity:
    consumer: str
    key_id: str  # which credential: an API key id or `jwt:<subject>`; never secret
    roles: frozenset[str] = frozenset()
    lane: Lane = Lane.INTERACTIVE
    settings: ConsumerConfig | None = None  # limits, guardrails, degradation (None: defaults)


_UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}
_TRACER = trace.get_tracer("modelbus.ingress")


def _rejected(message: str, code: str = "invalid_api_key") -> APIError:
    return APIError(401, message, code, headers=_UNAUTHORIZED)


def _identity(consumer: str, key_id: str, settings: ConsumerConfig | None, roles: frozenset[str]) -> Identity:
    if settings is not None:
        roles = roles | frozenset(settings.roles) | (frozenset({"admin"}) if settings.admin else frozenset())
        return Identity(consumer, key_id, roles, settings.lane, settings)
    return Identity(consumer, key_id, roles)


async def authenticate(request: Request) -> Identity:
    """FastAPI dependency: the caller's identity, or 401 in OpenAI's shape."""
    with _TRACER.start_as_current_span("auth"):
        return await _authenticate(request)


async def _authenticate(request: Request) -> Identity:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise _rejected("missing API key: send 'Authorization: Bearer <key>'", "missing_api_key")
    live: LiveConfig = request.app.state.live
    config = live.config
    if config.oidc and looks_like_jwt(token):
        verifier: OidcVerifier = request.app.state.oidc
        try:
            verified = await verifier.verify(token)
        except TokenRejected as exc:
            raise _rejected(str(exc)) from None
        settings = config.consumer(verified.consumer)
        if settings is None and verified.issuer.default_consumer is not None:
            settings = config.consumer(verified.issuer.default_consumer)
        return _identity(verified.consumer, f"jwt:{verified.subject}"[:64], settings, verified.roles)
    found = live.keys.identify(token)
    if found is None:
        raise _rejected("invalid API key (unknown, expired or revoked)")
    consumer, key_id = found
    settings = config.consumer(consumer)
    if settings is None:  # an issued key outlived its consumer's entry in the config
        raise _rejected("invalid API key (its consumer no longer exists)")
    return _identity(consumer, key_id, settings, frozenset())


Caller = Annotated[Identity, Depends(authenticate)]


def authorize(request: Request, identity: Identity, model: str | None, operation: Operation) -> None:
    """403 unless the caller's roles grant `operation` on `model`."""
    live: LiveConfig = request.app.state.live
    if not live.authorizer.permits(identity.roles, model, operation):
        target = f" on the model {model!r}" if model is not None else ""
        raise APIError(403, f"your roles do not allow {operation}{target}", "permission_denied")


async def require_admin(request: Request, identity: Caller) -> Identity:
    """FastAPI dependency for the admin API: 403 unless a role grants `admin`."""
    authorize(request, identity, None, "admin")
    return identity


Admin = Annotated[Identity, Depends(require_admin)]
