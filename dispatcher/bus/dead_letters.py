"""Dead-lettering: requests that exhausted their deliveries move to the dead-letter stream.

JetStream stops delivering a message after `max_deliver` attempts and announces it with a
MAX_DELIVERIES advisory. The dispatcher copies the message to `<ns>.dlq.<model>` (kept for two
weeks for inspection or replay), removes it from the work queue, and answers the waiting client at
once with an error frame instead of leaving it to wait for its deadline.
"""

from __future__ import annotations

import logging

import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.errors import APIError, NotFoundError
from pydantic import ValidationError

from dispatcher.bus.reply_stream import encode_frame
from dispatcher.bus.subjects import Subjects
from schemas.envelope import ErrorCode, ErrorFrame, RequestEnvelope

log = logging.getLogger(__name__)
# JSNoMessageFoundErr: nats-server 2.15 answers a delete of a message already gone with code 500.
_NO_MESSAGE = 10057


class DeadLetterer:
    def __init__(self, nc: NATS, subjects: Subjects) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._subjects = subjects
        self.dead_lettered = 0

    async def start(self) -> None:
        # A queue group: with several dispatcher replicas each advisory is handled by one of them,
        # not copied, fetched and answered by all (the dedupe id made that harmless, not cheap).
        await self._nc.subscribe(
            self._subjects.max_deliveries_advisory(),
            queue=self._subjects.dead_letter_stream,
            cb=self._on_advisory,
        )

    async def _on_advisory(self, msg: Msg) -> None:
        try:
            advisory = orjson.loads(msg.data)
            seq = int(advisory["stream_seq"])
            deliveries = int(advisory.get("deliveries", 0))
        except (orjson.JSONDecodeError, KeyError, ValueError, TypeError):
            log.warning("unreadable max-deliveries advisory ignored")
            return
        await self.dead_letter(seq, deliveries, str(advisory.get("consumer", "")))

    async def dead_letter(self, seq: int, deliveries: int, consumer: str) -> None:
        stream = self._subjects.request_stream
        try:
            raw = await self._js.get_msg(stream, seq)
        except NotFoundError:
            return  # already acked, expired or handled by another dispatcher
        try:
            envelope = RequestEnvelope.model_validate_json(raw.data or b"")
            model = envelope.target
        except ValidationError:
            envelope, model = None, "_undecodable"
        headers = {
            "Modelbus-Original-Subject": raw.subject or "",
            "Modelbus-Deliveries": str(deliveries),
            "Modelbus-Consumer": consumer,
            "Nats-Msg-Id": f"dlq-{stream}-{seq}",
        }
        await self._js.publish(self._subjects.dead_letter(model), raw.data or b"", headers=headers)
        try:
            await self._js.delete_msg(stream, seq)
        except APIError as exc:
            if not isinstance(exc, NotFoundError) and exc.err_code != _NO_MESSAGE:
                raise
            return  # another dispatcher moved it first (the copy above was deduplicated) and replied
        self.dead_lettered += 1
        log.warning("request seq %d dead-lettered after %d deliveries", seq, deliveries)
        if envelope is not None:
            # A fresh attempt number makes the ingress take this frame as the last word.
            frame = ErrorFrame(
                attempt=deliveries + 1,
                seq=0,
                code=ErrorCode.DEAD_LETTERED,
                message=f"the request failed on {deliveries} delivery attempts",
                status=502,
                retryable=False,
            )
            await self._nc.publish(envelope.reply_to, encode_frame(frame))
