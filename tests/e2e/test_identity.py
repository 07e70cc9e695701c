"""Identity end to end: issued keys (admin API and CLI) on three ingresses, revocation within 2 s,
expiry, OIDC bearer JWTs in Keycloak, Okta and Entra ID shapes, per-model RBAC, and no secret in
any log, audit row or error body."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from schemas.config import ConsumerConfig, ModelConfig, SimulatorBackend
from schemas.policy import OidcIssuerConfig, RoleConfig
from tests.support.servers import ADMIN_KEY, OTHER_KEY, TEST_KEY, Cluster, sql, wait_until, with_consumers

FAST = SimulatorBackend(ttft_ms=1, tokens_per_s=5000)
CHAT = {"max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _chat(base: str, token: str, model: str = "open") -> httpx.Response:
    return httpx.post(
        f"{base}/chat/completions", json={"model": model, **CHAT}, headers=_bearer(token), timeout=30
    )


def _error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    return dict(error)


class _Jwks:
    """An identity provider's JWKS endpoint, served for real over HTTP."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.fetches = 0
        jwks = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                jwks.fetches += 1
                body = json.dumps({"keys": jwks.keys}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, kid: str) -> rsa.RSAPrivateKey:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
        self.keys.append({**public, "kid": kid, "use": "sig", "alg": "RS256"})
        return key


@pytest.fixture
def jwks() -> Iterator[_Jwks]:
    server = _Jwks()
    yield server
    server.server.shutdown()


def _token(key: rsa.RSAPrivateKey, kid: str, **claims: Any) -> str:
    now = int(time.time())
    return jwt.encode({"iat": now, "exp": now + 300, **claims}, key, algorithm="RS256", headers={"kid": kid})


def test_issued_keys_revocation_expiry_rbac_and_no_secret_leaks(cluster: Cluster, database_url: str) -> None:
    config = with_consumers(
        [ModelConfig(name="open", backend=FAST), ModelConfig(name="secret-model", backend=FAST)]
    )
    config.roles.append(RoleConfig(name="open-only", models=["open"], operations=["chat"]))
    config.consumers.append(ConsumerConfig(name="limited", roles=["open-only"]))
    path = cluster.write_config(config)
    with cluster.together():
        cluster.dispatcher(path, database_url)
        gateways = [cluster.ingress(path) for _ in range(3)]
        cluster.worker("open", path, "w-open")
        cluster.worker("secret-model", path, "w-secret")
    bodies: list[str] = []

    # Who may issue keys: the admin role only.
    denied = httpx.post(
        f"{gateways[0][:-3]}/admin/keys", json={"consumer": "limited"}, headers=_bearer(TEST_KEY)
    )
    bodies.append(denied.text)
    _error(denied, 403)
    created = httpx.post(
        f"{gateways[0][:-3]}/admin/keys",
        json={"consumer": "limited", "id": "lim-1"},
        headers=_bearer(ADMIN_KEY),
    )
    assert created.status_code == 201, created.text
    issued = created.json()["key"]
    assert created.json()["id"] == "lim-1" and issued.startswith("mb-")
    unknown = httpx.post(
        f"{gateways[0][:-3]}/admin/keys", json={"consumer": "nobody"}, headers=_bearer(ADMIN_KEY)
    )
    _error(unknown, 400)

    # Every ingress accepts it within moments; RBAC: its role grants `open` only.
    wait_until(
        lambda: all(_chat(g, issued).status_code == 200 for g in gateways), 5, "issued key not accepted"
    )
    forbidden = _chat(gateways[1], issued, "secret-model")
    bodies.append(forbidden.text)
    assert _error(forbidden, 403)["type"] == "permission_error"
    listed = httpx.get(f"{gateways[2]}/models", headers=_bearer(issued)).json()
    assert [m["id"] for m in listed["data"]] == ["open"]
    assert httpx.get(f"{gateways[2]}/models/secret-model", headers=_bearer(issued)).status_code == 404
    assert {
        m["id"] for m in httpx.get(f"{gateways[2]}/models", headers=_bearer(TEST_KEY)).json()["data"]
    } == {
        "open",
        "secret-model",
    }

    # A key created with the CLI works too, and the listing never shows keys or hashes.
    cli = subprocess.run(
        [sys.executable, "-m", "modelbus.cli", "keys", "create", "--consumer", "limited", "--id", "lim-cli"],
        env=cluster.env(path),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    cli_key = next(w for w in cli.stdout.split() if w.startswith("mb-"))
    assert _chat(gateways[2], cli_key).status_code == 200
    listing = subprocess.run(
        [sys.executable, "-m", "modelbus.cli", "keys", "list"],
        env=cluster.env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "lim-1" in listing and "lim-cli" in listing and cli_key not in listing and "sha256" not in listing

    # Revocation reaches every ingress within 2 s.
    subprocess.run(
        [sys.executable, "-m", "modelbus.cli", "keys", "revoke", "lim-1"],
        env=cluster.env(),
        check=True,
        timeout=60,
    )
    revoked_at = time.monotonic()
    refused: dict[str, float] = {}
    while len(refused) < 3 and time.monotonic() - revoked_at < 10:
        for gateway in gateways:
            if gateway not in refused and _chat(gateway, issued).status_code == 401:
                refused[gateway] = time.monotonic() - revoked_at
        time.sleep(0.02)
    assert len(refused) == 3 and max(refused.values()) < 2.0, refused
    print(f"revocation refused on all three ingresses after {max(refused.values()) * 1000:.0f} ms")
    assert _chat(gateways[0], cli_key).status_code == 200  # other keys unaffected

    # Expiry.
    short = httpx.post(
        f"{gateways[0][:-3]}/admin/keys",
        json={"consumer": "limited", "expires_in_s": 1.0},
        headers=_bearer(ADMIN_KEY),
    ).json()["key"]
    assert _chat(gateways[0], short).status_code == 200
    time.sleep(1.2)
    expired = _chat(gateways[0], short)
    bodies.append(expired.text)
    _error(expired, 401)

    # No key, a wrong key, a malformed header: 401 in OpenAI's shape, the credential never echoed.
    for headers in ({}, _bearer("mb-wrong-" + "x" * 40), {"Authorization": "Basic abc"}, _bearer(issued)):
        response = httpx.post(
            f"{gateways[1]}/chat/completions", json={"model": "open", **CHAT}, headers=headers
        )
        bodies.append(response.text)
        assert _error(response, 401)["type"] == "authentication_error"

    # No secret anywhere: error bodies, every process log, every audit row.
    secrets = [issued, cli_key, short, TEST_KEY, OTHER_KEY, ADMIN_KEY, "mb-wrong-" + "x" * 40]
    wait_until(lambda: len(sql(database_url, "SELECT 1 FROM audit_log")) >= 10, 20, "audit rows missing")
    rows = json.dumps(sql(database_url, "SELECT * FROM audit_log"), default=str)
    logs = "".join(proc.log() for proc in cluster.procs)
    for secret in secrets:
        for where, text in (("bodies", "".join(bodies)), ("audit rows", rows), ("logs", logs)):
            assert secret not in text and secret[:20] not in text, f"a key appears in {where}"


def test_oidc_tokens_from_three_issuer_shapes(cluster: Cluster, jwks: _Jwks) -> None:
    config = with_consumers(
        [ModelConfig(name="open", backend=FAST), ModelConfig(name="gpt-internal", backend=FAST)]
    )
    config.roles.append(RoleConfig(name="open-only", models=["open"], operations=["chat"]))
    config.consumers.append(ConsumerConfig(name="sso-default", roles=[]))
    config.oidc = [
        # Keycloak: client id in `azp`, realm roles nested.
        OidcIssuerConfig(
            issuer="https://kc.example/realms/corp",
            jwks_url=jwks.url,
            audiences=["modelbus"],
            consumer_claim="azp",
            roles_claim="realm_access.roles",
            default_consumer="sso-default",
            jwks_refetch_s=1.0,
        ),
        # Okta: groups mapped to roles.
        OidcIssuerConfig(
            issuer="https://corp.okta.example/oauth2/default",
            jwks_url=jwks.url,
            audiences=["api://modelbus"],
            consumer_claim="cid",
            roles_claim="groups",
            role_map={"ml-platform": ["user"]},
            default_consumer="sso-default",
        ),
        # Entra ID: app roles in `roles`, the calling app in `appid`.
        OidcIssuerConfig(
            issuer="https://login.microsoftonline.example/tenant/v2.0",
            jwks_url=jwks.url,
            audiences=["api://0f2e-modelbus"],
            consumer_claim="appid",
            roles_claim="roles",
            role_map={"Modelbus.Open": ["open-only"]},
            default_consumer="sso-default",
        ),
    ]
    path = cluster.write_config(config)
    with cluster.together():
        base = cluster.ingress(path)
        cluster.worker("open", path, "w-open")
        cluster.worker("gpt-internal", path, "w-internal")
    key = jwks.add("k1")
    kc, okta, entra = (i.issuer for i in config.oidc)

    keycloak = _token(
        key, "k1", iss=kc, aud="modelbus", azp="app-a", sub="u1", realm_access={"roles": ["user"]}
    )
    assert _chat(base, keycloak, "gpt-internal").status_code == 200
    okta_token = _token(
        key, "k1", iss=okta, aud="api://modelbus", cid="app-b", sub="u2", groups=["ml-platform"]
    )
    assert _chat(base, okta_token, "gpt-internal").status_code == 200
    entra_token = _token(
        key, "k1", iss=entra, aud="api://0f2e-modelbus", appid="app-c", sub="u3", roles=["Modelbus.Open"]
    )
    assert _chat(base, entra_token, "open").status_code == 200
    assert _error(_chat(base, entra_token, "gpt-internal"), 403)["code"] == "permission_denied"
    listed = httpx.get(f"{base}/models", headers=_bearer(entra_token)).json()
    assert [m["id"] for m in listed["data"]] == ["open"]
    no_roles = _token(key, "k1", iss=kc, aud="modelbus", azp="app-d", sub="u4", realm_access={"roles": []})
    _error(_chat(base, no_roles), 403)

    # Each bad token: 401, and the message says why without echoing the token.
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    claims = {"iss": kc, "aud": "modelbus", "azp": "app-a", "sub": "u1", "realm_access": {"roles": ["user"]}}
    cases = {
        "signature": _token(other, "k1", **claims),
        "audience": _token(key, "k1", **{**claims, "aud": "someone-else"}),
        "expired": _token(key, "k1", **claims, exp=int(time.time()) - 3600),
        "unknown key": _token(key, "k-unknown", **claims),
        "untrusted issuer": _token(key, "k1", **{**claims, "iss": "https://evil.example"}),
    }
    for case, token in cases.items():
        response = _chat(base, token)
        error = _error(response, 401)
        assert token not in response.text and token[:30] not in response.text, case
        assert error["type"] == "authentication_error", case
    # Within the leeway an expired token is still good (clock skew between issuer and gateway).
    assert _chat(base, _token(key, "k1", **claims, exp=int(time.time()) - 5)).status_code == 200
    # The key set was fetched once per issuer (plus at most one refetch for the unknown key id, which
    # is rate-limited), not once per request.
    assert 3 <= jwks.fetches <= 4, jwks.fetches

    # Key rotation: the issuer publishes a new key and signs with it; the first token with the new key
    # id makes the gateway refetch (once the refetch gap, 1 s here, has passed) and it is accepted.
    rotated = jwks.add("k2")
    time.sleep(1.1)
    assert _chat(base, _token(rotated, "k2", **claims)).status_code == 200
