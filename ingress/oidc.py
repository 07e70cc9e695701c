"""Bearer JWTs from OpenID Connect issuers, verified against each issuer's JSON Web Key Set.

The key set is fetched at first use and cached; a token signed with a key id the cache does not know
triggers one refetch (issuers rotate keys by publishing the new one first), at most once per
`jwks_refetch_s` (default 10 s) per issuer so that tokens with made-up key ids cannot turn the gateway into a
load generator against the identity provider.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt

from ingress.error_responses import TokenRejected
from schemas.policy import OidcIssuerConfig

log = logging.getLogger(__name__)

_MAX_AGE_S = 3600.0


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    issuer: OidcIssuerConfig
    consumer: str
    roles: frozenset[str]
    subject: str


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and token.startswith("eyJ")


class _KeySet:
    def __init__(self, issuer: OidcIssuerConfig) -> None:
        self.issuer = issuer
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()

    async def key(self, kid: str | None, http: aiohttp.ClientSession) -> jwt.PyJWK:
        now = time.monotonic()
        if not self._keys or now - self._fetched_at > _MAX_AGE_S:
            await self._refresh(http, force=True)
        found = self._lookup(kid)
        if found is None and time.monotonic() - self._fetched_at > self.issuer.jwks_refetch_s:
            await self._refresh(http, force=False)
            found = self._lookup(kid)
        if found is None:
            raise TokenRejected("token signed with an unknown key")
        return found

    def _lookup(self, kid: str | None) -> jwt.PyJWK | None:
        if kid is None:
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)

    async def _refresh(self, http: aiohttp.ClientSession, force: bool) -> None:
        async with self._lock:
            if not force and time.monotonic() - self._fetched_at <= self.issuer.jwks_refetch_s:
                return  # another request refetched while this one waited
            url = str(self.issuer.jwks_url)
            try:
                async with http.get(url, timeout=aiohttp.ClientTimeout(total=5)) as response:
                    response.raise_for_status()
                    document = await response.json(content_type=None)
                keys: dict[str, jwt.PyJWK] = {}
                for entry in document.get("keys", []):
                    if entry.get("use", "sig") != "sig":
                        continue
                    try:
                        keys[entry.get("kid", "")] = jwt.PyJWK(entry)
                    except jwt.PyJWKError:
                        continue  # a key type this build cannot use; others may still verify
                self._keys = keys
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                # Keep serving with the keys we have; a later token retries after the gap.
                log.warning("could not fetch the key set of %s: %s", self.issuer.issuer, exc)
            finally:
                self._fetched_at = time.monotonic()


class OidcVerifier:
    def __init__(self, issuers: list[OidcIssuerConfig], http: aiohttp.ClientSession) -> None:
        self._http = http
        self._sets = {issuer.issuer: _KeySet(issuer) for issuer in issuers}

    def reconfigure(self, issuers: list[OidcIssuerConfig]) -> None:
        """Keep the cached key sets of issuers whose settings did not change."""
        sets = {}
        for issuer in issuers:
            old = self._sets.get(issuer.issuer)
            sets[issuer.issuer] = old if old is not None and old.issuer == issuer else _KeySet(issuer)
        self._sets = sets

    async def verify(self, token: str) -> VerifiedToken:
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise TokenRejected("malformed bearer token") from None
        keys = self._sets.get(str(unverified.get("iss", "")))
        if keys is None:
            raise TokenRejected("token from an untrusted issuer")
        issuer = keys.issuer
        if header.get("alg") not in issuer.algorithms:
            raise TokenRejected("token signed with a disallowed algorithm")
        key = await keys.key(header.get("kid"), self._http)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=issuer.algorithms,
                audience=issuer.audiences,
                issuer=issuer.issuer,
                leeway=issuer.leeway_s,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenRejected("token expired") from None
        except jwt.InvalidAudienceError:
            raise TokenRejected("token not meant for this gateway (audience)") from None
        except jwt.InvalidSignatureError:
            raise TokenRejected("token signature does not verify") from None
        except jwt.PyJWTError as exc:
            raise TokenRejected(f"token rejected: {type(exc).__name__}") from None
        consumer = _claim(claims, issuer.consumer_claim)
        if not isinstance(consumer, str) or not consumer:
            raise TokenRejected(f"token has no {issuer.consumer_claim!r} claim")
        return VerifiedToken(issuer, consumer, _roles(claims, issuer), str(claims.get("sub", consumer)))


def _claim(claims: dict[str, Any], path: str) -> Any:
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _roles(claims: dict[str, Any], issuer: OidcIssuerConfig) -> frozenset[str]:
    raw = _claim(claims, issuer.roles_claim)
    values = raw.split() if isinstance(raw, str) else raw if isinstance(raw, list) else []
    roles: set[str] = set()
    for value in values:
        if isinstance(value, str):
            roles.update(issuer.role_map.get(value, [value]))
    return frozenset(roles)
