"""One webhook attempt: a signed POST to an address checked on this very connection, no redirects.

aiohttp asks the connector's resolver for addresses on every new connection (its DNS cache is off
here), and the resolver below answers only with addresses the policy approved — so the socket goes
to the address that was checked, while the Host header and TLS SNI (and certificate check) keep
the name from the URL. Address literals never reach a resolver; `check_url` checks them first.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from dispatcher.errors import WebhookRefused
from dispatcher.webhooks.addresses import Destination, WebhookPolicy
from dispatcher.webhooks.signing import signature_headers


class _CheckingResolver(AbstractResolver):
    def __init__(self, policy: WebhookPolicy) -> None:
        self._policy = policy

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        name = host.lower().rstrip(".")
        ips = await self._policy.addresses(Destination("http", name, port, None))
        return [
            ResolveResult(
                hostname=host,
                host=str(ip),
                port=port,
                family=socket.AF_INET6 if ip.version == 6 else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for ip in ips
        ]

    async def close(self) -> None:
        return None


@dataclass(frozen=True, slots=True)
class Attempt:
    """How one attempt went. `permanent`: retrying cannot help (the address is forbidden)."""

    ok: bool
    reason: str | None = None
    permanent: bool = False


class WebhookSender:
    def __init__(
        self, policy: WebhookPolicy, secret: str | None, timeout_s: float = 10.0, per_destination: int = 4
    ) -> None:
        self._policy = policy
        self._secret = secret
        self._timeout_s = timeout_s
        self._per_destination = per_destination
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                resolver=_CheckingResolver(self._policy),
                use_dns_cache=False,  # every connection resolves and checks again
                limit_per_host=self._per_destination,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=self._timeout_s),
                trust_env=False,  # no proxy from the environment: it would connect on our behalf
            )
        return self._session

    async def post(self, url: str, message_id: str, body: bytes) -> Attempt:
        try:
            self._policy.check_url(url)
        except WebhookRefused as exc:
            return Attempt(False, f"refused: {exc.rule}", permanent=True)
        if not self._secret:
            # A receiver could not tell our delivery from anyone's POST: never send one unsigned.
            return Attempt(
                False, "not sent: no signing secret is configured (MODELBUS_WEBHOOK_SECRET)", permanent=True
            )
        headers = {"Content-Type": "application/json", "Modelbus-Task-Id": message_id}
        headers.update(signature_headers(self._secret, message_id, body))
        options: dict[str, Any] = {"allow_redirects": False}
        try:
            async with self._client().post(url, data=body, headers=headers, **options) as response:
                status = response.status
        except WebhookRefused as exc:
            # The name resolved to a forbidden address at connect time: maybe only for now (DNS).
            return Attempt(False, f"refused at connect: {exc.rule}")
        except TimeoutError:
            return Attempt(False, "timeout")
        except aiohttp.ClientError as exc:
            return Attempt(False, f"connection: {type(exc).__name__}")
        if 300 <= status < 400:
            return Attempt(False, f"redirect refused (HTTP {status})")
        if not 200 <= status < 300:
            return Attempt(False, f"HTTP {status}")
        return Attempt(True)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
