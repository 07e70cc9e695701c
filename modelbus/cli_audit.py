"""Audit rows for what operators change from the command line (config apply, key create and revoke).

The actor is the operating-system account and host the command ran on: the CLI talks to NATS with
operator credentials, not with an API key, so that is the most specific identity there is.
"""

from __future__ import annotations

import getpass
import socket
import time
import uuid
from typing import Any

from nats.aio.client import Client as NATS

from dispatcher.audit.publisher import AuditPublisher
from dispatcher.bus.subjects import Subjects
from schemas.audit import AuditEvent, AuditStatus


def actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"cli:{user}@{socket.gethostname()}"


async def audit_action(nc: NATS, subjects: Subjects, action: str, target: dict[str, Any]) -> None:
    """Publish one `admin` audit event and wait until JetStream has it."""
    now_ms = int(time.time() * 1000)
    event_id = uuid.uuid4().hex
    publisher = AuditPublisher(nc, subjects, "cli")
    publisher.emit(
        AuditEvent(
            event_id=event_id,
            request_id=event_id,
            kind="admin",
            endpoint=action,
            status=AuditStatus.SERVED,
            http_status=200,
            consumer=actor()[:128],
            input=target,
            received_ms=now_ms,
            finished_ms=now_ms,
        )
    )
    await publisher.flush(timeout=10.0)
