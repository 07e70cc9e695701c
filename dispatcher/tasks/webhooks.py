"""Task webhooks: the finished task POSTed to the caller's URL, signed, retried with backoff.

Signature: `Modelbus-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`, the scheme
Stripe and others use, so receivers can check both origin and freshness.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time

import aiohttp
import orjson
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from schemas.tasks import Task

log = logging.getLogger(__name__)


class WebhookFailed(Exception):
    """The receiver did not accept the delivery (network error or a non-2xx answer)."""


def sign(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify_signature(secret: str, header: str, body: bytes, tolerance_s: int = 300) -> bool:
    """For receivers (and tests): constant-time check of a `Modelbus-Signature` header."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), header)


class WebhookSender:
    def __init__(self, secret: str | None, attempts: int = 6, max_wait_s: float = 30.0) -> None:
        self._secret = secret
        self._attempts = attempts
        self._max_wait_s = max_wait_s
        self._session: aiohttp.ClientSession | None = None

    async def deliver(self, task: Task) -> bool:
        if not task.webhook_url:
            return True
        body = orjson.dumps(task.public())
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(WebhookFailed),
                stop=stop_after_attempt(self._attempts),
                wait=wait_exponential(multiplier=0.5, max=self._max_wait_s),
                reraise=True,
            ):
                with attempt:
                    await self._post(task.webhook_url, task.id, body)
            return True
        except WebhookFailed as exc:
            log.warning("webhook for task %s gave up after %d attempts: %s", task.id, self._attempts, exc)
            return False

    async def _post(self, url: str, task_id: str, body: bytes) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        headers = {"Content-Type": "application/json", "Modelbus-Task-Id": task_id}
        if self._secret:
            headers["Modelbus-Signature"] = sign(self._secret, int(time.time()), body)
        try:
            async with self._session.post(url, data=body, headers=headers) as response:
                if not 200 <= response.status < 300:
                    raise WebhookFailed(f"HTTP {response.status}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise WebhookFailed(type(exc).__name__) from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
