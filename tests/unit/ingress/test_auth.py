"""ingress/auth.py: who is calling, from `Authorization: Bearer` or Anthropic's `x-api-key`; every
failure a 401 that names the problem without echoing the credential; the admin and batch gates."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from starlette.requests import Request

from dispatcher.admission.live_config import LiveConfig
from dispatcher.policy.api_keys import hash_key, new_key
from ingress.audit_events import AuditDraft
from ingress.auth import authenticate, require_admin, require_batch
from ingress.error_responses import APIError
from ingress.key_lookup import KeyRing
from schemas.config import ApiKey, ConsumerConfig, ModelbusConfig
from schemas.keys import ApiKeyRecord
from schemas.policy import RoleConfig

USER_KEY, ADMIN_KEY, ORPHAN_KEY, CHAT_KEY = new_key(), new_key(), new_key(), new_key()
CONFIG = ModelbusConfig(
    roles=[
        RoleConfig(name="batcher", operations=["chat", "batch"]),
        RoleConfig(name="chatonly", operations=["chat"]),
    ],
    consumers=[
        ConsumerConfig(name="team", roles=["user"], keys=[ApiKey(id="k-team", hash=hash_key(USER_KEY))]),
        ConsumerConfig(
            name="chatter", roles=["chatonly"], keys=[ApiKey(id="k-chat", hash=hash_key(CHAT_KEY))]
        ),
        ConsumerConfig(
            name="ops", admin=True, roles=["batcher"], keys=[ApiKey(id="k-ops", hash=hash_key(ADMIN_KEY))]
        ),
    ],
)


@dataclass
class Services:
    """The parts of the ingress's services that authentication reads (real objects, no NATS needed)."""

    live: LiveConfig
    keys: KeyRing
    oidc: Any = None


def _services() -> Services:
    ring = KeyRing(CONFIG)
    # A key issued at run time for a consumer since removed from the configuration.
    orphan = ApiKeyRecord(
        id="k-gone", consumer="gone", hash=hash_key(ORPHAN_KEY), created_at=datetime.now(UTC)
    )
    ring.replace_issued({orphan.hash: orphan})
    return Services(LiveConfig(CONFIG), ring)


def _request(headers: dict[str, str], draft: AuditDraft | None = None) -> Request:
    scope = {
        "type": "http", "method": "POST", "path": "/v1/chat/completions", "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "state": {"audit": draft} if draft is not None else {},
    }  # fmt: skip
    return Request(scope)


async def _auth(headers: dict[str, str], draft: AuditDraft | None = None) -> Any:
    return await authenticate(_request(headers, draft), _services())  # type: ignore[arg-type]


async def test_a_bearer_key_identifies_its_consumer_and_the_audit_row_names_it() -> None:
    draft = AuditDraft("r1", "chat", 0)
    identity = await _auth({"Authorization": f"Bearer {USER_KEY}"}, draft)
    assert (identity.consumer, identity.key_id, identity.roles) == ("team", "k-team", {"user"})
    assert (draft.consumer, draft.key_id) == ("team", "k-team")


async def test_anthropic_clients_x_api_key_works_too() -> None:
    identity = await _auth({"x-api-key": USER_KEY, "anthropic-version": "2023-06-01"})
    assert identity.consumer == "team"


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "missing_api_key"),
        ({"Authorization": f"Basic {USER_KEY}"}, "missing_api_key"),
        ({"Authorization": "Bearer "}, "missing_api_key"),
        ({"Authorization": f"Bearer {USER_KEY}x"}, "invalid_api_key"),
        ({"Authorization": f"Bearer {hash_key(USER_KEY)}"}, "invalid_api_key"),  # the digest is not a key
        ({"Authorization": f"Bearer {ORPHAN_KEY}"}, "invalid_api_key"),  # its consumer is gone
        ({"Authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig"}, "invalid_api_key"),  # a JWT, no issuer set
    ],
)
async def test_every_failure_is_a_401_that_does_not_echo_the_credential(
    headers: dict[str, str], code: str
) -> None:
    with pytest.raises(APIError) as refused:
        await _auth(headers)
    error = refused.value
    assert (error.status, error.code, error.headers) == (401, code, {"WWW-Authenticate": "Bearer"})
    credential = next(iter(headers.values()), "").partition(" ")[2]
    assert not credential or credential[-12:] not in error.message


async def test_only_an_admin_role_passes_the_admin_gate() -> None:
    services = _services()
    admin = await _auth({"Authorization": f"Bearer {ADMIN_KEY}"})
    assert await require_admin(admin, services) is admin  # type: ignore[arg-type]
    user = await _auth({"Authorization": f"Bearer {USER_KEY}"})
    with pytest.raises(APIError) as refused:
        await require_admin(user, services)  # type: ignore[arg-type]
    assert (refused.value.status, refused.value.code) == (403, "permission_denied")


async def test_only_a_role_granting_batch_passes_the_batch_gate() -> None:
    services = _services()
    batcher = await _auth({"Authorization": f"Bearer {ADMIN_KEY}"})
    assert await require_batch(batcher, services) is batcher  # type: ignore[arg-type]
    chatter = await _auth({"Authorization": f"Bearer {CHAT_KEY}"})
    with pytest.raises(APIError) as refused:
        await require_batch(chatter, services)  # type: ignore[arg-type]
    assert refused.value.status == 403
