"""ingress/oidc.py against a real JWKS endpoint on loopback: what verifies, every way a token is
refused (issuer, audience, expiry, algorithm, signature, unknown key), roles by claim path and map,
key rotation with a bounded refetch rate, and never the token in a refusal."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from ingress.error_responses import TokenRejected
from ingress.oidc import OidcVerifier, looks_like_jwt
from schemas.policy import OidcIssuerConfig

ISSUER = "https://idp.example"


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass
class Idp:
    """An identity provider's key set, served over HTTP; counts the fetches."""

    keys: dict[str, rsa.RSAPrivateKey] = field(default_factory=dict)
    fetches: int = 0
    url: str = ""

    def publish(self, kid: str) -> rsa.RSAPrivateKey:
        self.keys[kid] = _new_key()
        return self.keys[kid]

    async def jwks(self, _: web.Request) -> web.Response:
        self.fetches += 1
        entries = []
        for kid, key in self.keys.items():
            entry = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
            entries.append({**entry, "kid": kid, "use": "sig", "alg": "RS256"})
        return web.json_response({"keys": entries})

    def token(self, kid: str = "k1", key: Any = None, alg: str = "RS256", **claims: Any) -> str:
        body = {"iss": ISSUER, "aud": "modelbus", "sub": "svc-1", "exp": time.time() + 60, **claims}
        return jwt.encode(body, key or self.keys[kid], algorithm=alg, headers={"kid": kid})


@pytest.fixture
async def idp() -> AsyncIterator[Idp]:
    provider = Idp()
    provider.publish("k1")
    app = web.Application()
    app.router.add_get("/jwks", provider.jwks)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    provider.url = f"http://127.0.0.1:{port}/jwks"
    yield provider
    await runner.cleanup()


def _issuer(idp: Idp, **overrides: Any) -> OidcIssuerConfig:
    values: dict[str, Any] = {
        "issuer": ISSUER,
        "jwks_url": idp.url,
        "audiences": ["modelbus"],
        "roles_claim": "realm_access.roles",
        "role_map": {"ml-users": ["user", "batch"]},
        "leeway_s": 0,
    }
    values.update(overrides)
    return OidcIssuerConfig(**values)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_a_valid_token_names_its_consumer_and_mapped_roles(
    idp: Idp, http: aiohttp.ClientSession
) -> None:
    verifier = OidcVerifier([_issuer(idp)], http)
    token = idp.token(realm_access={"roles": ["ml-users", "auditor"]})
    assert looks_like_jwt(token)
    verified = await verifier.verify(token)
    assert (verified.consumer, verified.subject) == ("svc-1", "svc-1")
    assert verified.roles == {"user", "batch", "auditor"}  # mapped, and unmapped values as they are


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"iss": "https://evil.example"}, "untrusted issuer"),
        ({"aud": "someone-else"}, "audience"),
        ({"exp": time.time() - 5}, "expired"),
        ({"sub": ""}, "no 'sub' claim"),
    ],
)
async def test_tokens_with_bad_claims_are_refused(
    idp: Idp, http: aiohttp.ClientSession, claims: dict[str, Any], reason: str
) -> None:
    token = idp.token(**claims)
    with pytest.raises(TokenRejected, match=reason) as refused:
        await OidcVerifier([_issuer(idp)], http).verify(token)
    assert token not in str(refused.value) and token[-20:] not in str(refused.value)


async def test_a_token_signed_by_another_key_is_refused(idp: Idp, http: aiohttp.ClientSession) -> None:
    forged = idp.token(key=_new_key())  # claims the published key id, signed with another key
    with pytest.raises(TokenRejected, match="signature"):
        await OidcVerifier([_issuer(idp)], http).verify(forged)


async def test_an_algorithm_the_issuer_does_not_allow_is_refused(
    idp: Idp, http: aiohttp.ClientSession
) -> None:
    hs = jwt.encode(
        {"iss": ISSUER, "aud": "modelbus", "sub": "x", "exp": time.time() + 60}, "s" * 32, "HS256"
    )
    with pytest.raises(TokenRejected, match="algorithm"):
        await OidcVerifier([_issuer(idp)], http).verify(hs)
    with pytest.raises(TokenRejected, match="malformed"):
        await OidcVerifier([_issuer(idp)], http).verify("eyJ.not.ajwt")


async def test_made_up_key_ids_do_not_make_the_gateway_hammer_the_idp(
    idp: Idp, http: aiohttp.ClientSession
) -> None:
    verifier = OidcVerifier([_issuer(idp, jwks_refetch_s=60)], http)
    await verifier.verify(idp.token())
    made_up = idp.token("made-up", key=_new_key())
    for _ in range(5):
        with pytest.raises(TokenRejected, match="unknown key"):
            await verifier.verify(made_up)
    assert idp.fetches == 1  # the key set was fetched less than jwks_refetch_s ago


async def test_a_rotated_key_is_fetched_once_then_cached(idp: Idp, http: aiohttp.ClientSession) -> None:
    verifier = OidcVerifier([_issuer(idp, jwks_refetch_s=0)], http)
    await verifier.verify(idp.token())
    idp.publish("k2")  # the issuer rotates: the new key is published before it signs anything
    assert (await verifier.verify(idp.token("k2"))).consumer == "svc-1"
    assert idp.fetches == 2
    await verifier.verify(idp.token("k2"))
    await verifier.verify(idp.token("k1"))
    assert idp.fetches == 2  # both keys cached


async def test_reconfiguring_keeps_the_key_sets_of_unchanged_issuers(
    idp: Idp, http: aiohttp.ClientSession
) -> None:
    verifier = OidcVerifier([_issuer(idp)], http)
    await verifier.verify(idp.token())
    verifier.reconfigure([_issuer(idp)])
    await verifier.verify(idp.token())
    assert idp.fetches == 1
    verifier.reconfigure([_issuer(idp, audiences=["other"])])
    with pytest.raises(TokenRejected, match="audience"):
        await verifier.verify(idp.token())
    assert idp.fetches == 2
