"""Stored responses of the Responses API, in a JetStream KV bucket that every ingress and worker sees.

Why KV rather than Postgres: a continuation (`previous_response_id`) reads its conversation on the
request path, and NATS is on that path already, so storing there adds no dependency whose outage
becomes the gateway's (Postgres stays off the request path, as for quotas and task status). The
bucket is a replicated JetStream stream (R3 in the clustered deployment), so a stored response
survives the loss of a node; entries expire with the bucket's TTL (`MODELBUS_RESPONSE_TTL_S`, 30 days
like OpenAI's), and the audit trail in Postgres keeps every request and answer for longer.

The worker stores a response before the client can see it (before the final frame, or before the
`response.completed` event), so a client may continue it at once through any ingress.
"""

from __future__ import annotations

import logging
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from dispatcher.bus.bus_settings import BusSettings
from dispatcher.bus.subjects import Subjects
from dispatcher.bus.topology import ensure_bucket
from dispatcher.errors import InvalidRequest
from schemas.dialects import StoredResponse, input_items

log = logging.getLogger(__name__)


class ResponseStore:
    def __init__(self, kv: KeyValue, max_bytes: int) -> None:
        self._kv = kv
        self._max_bytes = max_bytes  # one KV value is one NATS message

    @classmethod
    async def open(
        cls, js: JetStreamContext, subjects: Subjects, settings: BusSettings, max_payload: int
    ) -> ResponseStore:
        kv = await ensure_bucket(
            js,
            settings,
            subjects.response_bucket,
            "Modelbus stored responses (Responses API)",
            ttl_s=settings.response_ttl_s,
        )
        return cls(kv, max_payload - 4096)

    async def save(self, record: StoredResponse) -> bool:
        """Keep a response; False if it could not be kept (too large, NATS away): the caller says so."""
        data = record.model_dump_json().encode()
        if len(data) > self._max_bytes:
            log.warning(
                "response %s not stored: %d bytes is more than one NATS message", record.id, len(data)
            )
            return False
        try:
            await self._kv.put(record.id, data)
        except Exception as exc:  # noqa: BLE001 - the answer still goes out, marked as not stored
            log.warning("response %s not stored: %s", record.id, exc)
            return False
        return True

    async def get(self, response_id: str, consumer: str) -> StoredResponse | None:
        """The caller's own stored response; someone else's is indistinguishable from none."""
        try:
            entry = await self._kv.get(response_id)
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        record = StoredResponse.model_validate_json(entry.value)
        return record if record.consumer == consumer else None

    async def delete(self, response_id: str, consumer: str) -> bool:
        if await self.get(response_id, consumer) is None:
            return False
        await self._kv.purge(response_id)  # no tombstone history kept: the content is gone
        return True

    async def continued(self, payload: dict[str, Any], consumer: str) -> dict[str, Any]:
        """A Responses request with `previous_response_id` as the model must see it: the stored
        conversation, then the new input. Instructions are not carried over (as OpenAI does)."""
        previous = str(payload["previous_response_id"])
        record = await self.get(previous, consumer)
        if record is None:
            raise InvalidRequest(
                f"no stored response {previous!r}", "previous_response_not_found", "previous_response_id"
            )
        return {**payload, "input": [*record.conversation(), *input_items(payload["input"])]}
