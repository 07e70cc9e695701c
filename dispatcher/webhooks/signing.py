"""How a webhook delivery is signed, so its receiver can check origin and freshness.

Two headers carry the same HMAC-SHA256 secret:
- `Modelbus-Signature: t=<unix seconds>,v1=<hex HMAC of "<t>.<body>">` (the Stripe-style scheme
  this gateway has always sent);
- the Standard Webhooks set (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC
  of "<id>.<t>.<body>">`), so receivers can use the stock libraries. A `whsec_` secret is base64,
  as that convention has it; any other secret is used as its UTF-8 bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time


def new_secret() -> str:
    """A fresh secret in the Standard Webhooks form (what `modelbus up` keeps)."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def _key(secret: str) -> bytes:
    if secret.startswith("whsec_"):
        try:
            return base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        except binascii.Error:
            pass
    return secret.encode()


def sign(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(_key(secret), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def standard_signature(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(_key(secret), signed, hashlib.sha256).digest()).decode()


def signature_headers(secret: str, message_id: str, body: bytes, now: int | None = None) -> dict[str, str]:
    timestamp = int(time.time()) if now is None else now
    return {
        "Modelbus-Signature": sign(secret, timestamp, body),
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": standard_signature(secret, message_id, timestamp, body),
    }


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


def verify_standard(
    secret: str, message_id: str, timestamp: str, signature: str, body: bytes, tolerance_s: int = 300
) -> bool:
    """The Standard Webhooks check: any of the space-separated `v1,` signatures matches."""
    try:
        when = int(timestamp)
    except ValueError:
        return False
    if abs(time.time() - when) > tolerance_s:
        return False
    expected = standard_signature(secret, message_id, when, body)
    return any(hmac.compare_digest(expected, candidate) for candidate in signature.split())
