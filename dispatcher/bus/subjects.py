"""Subject, stream and consumer naming, with an injective encoding for user-supplied tokens.

Every user-supplied value that ends up in a subject (model names, versions, request ids) goes
through `encode_token`, so it can never contain `.`, `*`, `>`, whitespace or non-ASCII and thus can
never widen a subscription, add a subject level, or collide with another value.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from schemas.envelope import Lane

_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-")
_ESCAPE = ord("_")
_NAMESPACE = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
# Consumer names become file names on the server, so long encodings are replaced by a digest.
# `_H` can never come out of encode_token (H is not a hex digit), so digests cannot collide with it.
_MAX_NAME = 64


# The last token of a pulse subject. `encode_token` writes `_` only before two upper-case hex
# digits, so this token can never be an encoded request id.
PULSE_TOKEN = "_pulse"


def encode_token(value: str) -> str:
    """Encode `value` as one subject token: `[A-Za-z0-9-]` kept, every other byte as `_XX`."""
    if not value:
        raise ValueError("a subject token cannot be empty")
    out: list[str] = []
    for byte in value.encode("utf-8"):
        if byte in _SAFE:
            out.append(chr(byte))
        else:
            out.append(f"_{byte:02X}")
    return "".join(out)


def decode_token(token: str) -> str:
    """Invert `encode_token`; raises ValueError on anything it could not have produced."""
    raw = bytearray()
    i = 0
    data = token.encode("ascii")
    while i < len(data):
        byte = data[i]
        if byte == _ESCAPE:
            hex_digits = data[i + 1 : i + 3]
            if len(hex_digits) != 2 or not re.fullmatch(rb"[0-9A-F]{2}", hex_digits):
                raise ValueError(f"bad escape in token {token!r}")
            decoded = int(hex_digits, 16)
            if decoded in _SAFE:
                raise ValueError(f"non-canonical escape in token {token!r}")
            raw.append(decoded)
            i += 3
        elif byte in _SAFE:
            raw.append(byte)
            i += 1
        else:
            raise ValueError(f"unexpected character in token {token!r}")
    return raw.decode("utf-8")


def _name(*tokens: str) -> str:
    name = "__".join(tokens)
    if len(name) <= _MAX_NAME:
        return name
    return "_H" + hashlib.sha256(name.encode()).hexdigest()[:40]


@dataclass(frozen=True, slots=True)
class Subjects:
    """All names Modelbus uses on one NATS system, scoped by a namespace (default `mb`).

    Layout:
      <ns>.share.<model>.<version>.<lane>.<bucket>   requests waiting for their fair share
      <ns>.req.<model>.<version>.<lane>   requests, persisted in the request stream
      <ns>.req.<model>.<version>.interactive.<k>   requests of affinity bucket k (models with affinity)
      <ns>.affbell.<model>.<version>.<k>  "bucket k has work" nudge to the model's workers (core NATS)
      <ns>.reply.<ingress>.<request>      reply frames (core NATS), read by one ingress only
      <ns>.reply.<ingress>._pulse         batched liveness of that ingress's requests (`_pulse` is
                                          no `encode_token` output, so no request id can take it)
      <ns>.cancel.<request>               cancellation broadcast to workers (core NATS)
      <ns>.task.<task>                    async task replies, persisted for the collector
      <ns>.batchline.<batch>              batch lines waiting for admission (work queue)
      <ns>.webhook.<task>                 task webhooks waiting for delivery (work queue)
      <ns>.quota.<consumer>.<model|_all>.<window>.<period>   usage counters (JetStream counters)
    """

    namespace: str = "mb"

    def __post_init__(self) -> None:
        if not _NAMESPACE.match(self.namespace):
            raise ValueError("namespace must match [a-z][a-z0-9-]{0,31}")

    # streams -------------------------------------------------------------------------------
    @property
    def request_stream(self) -> str:
        return f"{self.namespace.upper()}_REQUESTS"

    @property
    def dead_letter_stream(self) -> str:
        return f"{self.namespace.upper()}_DEAD_LETTERS"

    @property
    def audit_stream(self) -> str:
        return f"{self.namespace.upper()}_AUDIT"

    # requests ------------------------------------------------------------------------------
    @property
    def all_requests(self) -> str:
        return f"{self.namespace}.req.>"

    def request(self, model: str, version: str = "default", lane: Lane = Lane.INTERACTIVE) -> str:
        return f"{self.namespace}.req.{encode_token(model)}.{encode_token(version)}.{lane.value}"

    def consumer(self, model: str, version: str = "default", lane: Lane = Lane.INTERACTIVE) -> str:
        """Durable pull consumer shared by every worker of (model, version) for one lane."""
        return _name(encode_token(model), encode_token(version), lane.value)

    # prefix-cache affinity (dispatcher/scheduling/affinity.py) -------------------------------------------
    # Only the interactive lane has buckets. A bucket subject has one token more than the lane's
    # FIFO subject, so the FIFO consumer's filter never matches it and no message has two consumers.
    def affinity_request(self, model: str, version: str, bucket: int) -> str:
        lane = Lane.INTERACTIVE.value
        return f"{self.namespace}.req.{encode_token(model)}.{encode_token(version)}.{lane}.{bucket:d}"

    def affinity_consumer(self, model: str, version: str, bucket: int) -> str:
        """The durable consumer of one affinity bucket, shared by every worker of (model, version)."""
        return _name(encode_token(model), encode_token(version), Lane.INTERACTIVE.value, f"{bucket:d}")

    def affinity_bell(self, model: str, version: str, bucket: int) -> str:
        return f"{self.namespace}.affbell.{encode_token(model)}.{encode_token(version)}.{bucket:d}"

    def affinity_bells(self, model: str, version: str) -> str:
        return f"{self.namespace}.affbell.{encode_token(model)}.{encode_token(version)}.*"

    @property
    def all_affinity_bells(self) -> str:
        return f"{self.namespace}.affbell.>"

    @staticmethod
    def affinity_bucket_of(subject: str) -> int | None:
        """The bucket of a request or bell subject; None for a FIFO (lane) subject."""
        last = subject.rsplit(".", 1)[-1]
        return int(last) if last.isdigit() else None

    # fair share (dispatcher/scheduling/fair_share.py) ---------------------------------------------------
    @property
    def share_stream(self) -> str:
        return f"{self.namespace.upper()}_SHARES"

    @property
    def all_shares(self) -> str:
        return f"{self.namespace}.share.>"

    def share(self, model: str, version: str, lane: Lane, bucket: str) -> str:
        """Where one consumer's (or group's) requests for a model wait until the feeder releases them."""
        head = f"{self.namespace}.share.{encode_token(model)}.{encode_token(version)}"
        return f"{head}.{lane.value}.{encode_token(bucket)}"

    def share_consumer(self, model: str, version: str, lane: Lane, bucket: str) -> str:
        """The feeder's durable consumer of one share subject (in the share stream)."""
        return _name(encode_token(model), encode_token(version), lane.value, encode_token(bucket))

    def parse_share(self, subject: str) -> tuple[str, str, Lane, str]:
        """(model, version, lane, bucket) of a share subject; ValueError for anything else."""
        parts = subject.split(".")
        if len(parts) != 6 or parts[0] != self.namespace or parts[1] != "share":
            raise ValueError(f"not a share subject: {subject!r}")
        return decode_token(parts[2]), decode_token(parts[3]), Lane(parts[4]), decode_token(parts[5])

    @property
    def share_bell(self) -> str:
        """Core NATS nudge after a request is staged, so the feeder need not poll while idle."""
        return f"{self.namespace}.sharebell"

    @property
    def share_lease_bucket(self) -> str:
        return f"{self.namespace}-share-lease"

    def dead_letter(self, model: str) -> str:
        return f"{self.namespace}.dlq.{encode_token(model)}"

    @property
    def all_dead_letters(self) -> str:
        return f"{self.namespace}.dlq.>"

    # audit -----------------------------------------------------------------------------------
    def audit(self, source: str) -> str:
        return f"{self.namespace}.audit.{encode_token(source)}"

    @property
    def all_audit(self) -> str:
        return f"{self.namespace}.audit.>"

    audit_sink_consumer = "audit-sink"

    @property
    def audit_checkpoint_bucket(self) -> str:
        return f"{self.namespace}-audit-checkpoints"

    # async tasks -----------------------------------------------------------------------------
    @property
    def task_reply_stream(self) -> str:
        return f"{self.namespace.upper()}_TASK_REPLIES"

    def task_reply(self, task_id: str) -> str:
        """Workers answer an async task here; the stream keeps the frames for the collector."""
        return f"{self.namespace}.task.{encode_token(task_id)}"

    def is_task_reply(self, subject: str) -> bool:
        return subject.startswith(f"{self.namespace}.task.")

    @property
    def all_task_replies(self) -> str:
        return f"{self.namespace}.task.*"

    @property
    def task_bucket(self) -> str:
        return f"{self.namespace}-tasks"

    task_collector_consumer = "task-collector"

    # webhook deliveries ------------------------------------------------------------------------
    @property
    def webhook_stream(self) -> str:
        return f"{self.namespace.upper()}_WEBHOOKS"

    def webhook(self, task_id: str) -> str:
        """A finished task's webhook waits here for the delivery service, until delivered or given up."""
        return f"{self.namespace}.webhook.{encode_token(task_id)}"

    @property
    def all_webhooks(self) -> str:
        return f"{self.namespace}.webhook.*"

    webhook_consumer = "webhook-delivery"

    # batch lines ------------------------------------------------------------------------------
    @property
    def batch_line_stream(self) -> str:
        return f"{self.namespace.upper()}_BATCH_LINES"

    def batch_lines(self, batch_id: str) -> str:
        """A batch's lines wait here for admission, which runs when each is fed to the bus."""
        return f"{self.namespace}.batchline.{encode_token(batch_id)}"

    @property
    def all_batch_lines(self) -> str:
        return f"{self.namespace}.batchline.*"

    batch_feeder_consumer = "batch-feeder"

    # worker registry -------------------------------------------------------------------------
    @property
    def worker_bucket(self) -> str:
        return f"{self.namespace}-workers"

    @staticmethod
    def worker_key(model: str, version: str, worker_id: str) -> str:
        return f"{encode_token(model)}.{encode_token(version)}.{encode_token(worker_id)}"

    @property
    def cache_bucket(self) -> str:
        return f"{self.namespace}-cache"

    @property
    def response_bucket(self) -> str:
        """Stored responses of the Responses API, by response id."""
        return f"{self.namespace}-responses"

    @property
    def semantic_cache_bucket(self) -> str:
        return f"{self.namespace}-semcache"

    # configuration ---------------------------------------------------------------------------
    @property
    def config_bucket(self) -> str:
        return f"{self.namespace}-config"

    # identity and quotas ----------------------------------------------------------------------
    @property
    def key_bucket(self) -> str:
        return f"{self.namespace}-keys"

    @property
    def quota_stream(self) -> str:
        return f"{self.namespace.upper()}_QUOTAS"

    @property
    def all_quotas(self) -> str:
        return f"{self.namespace}.quota.>"

    def quota(self, consumer: str, model: str | None, window: str, period: str) -> str:
        """One counter: a consumer's use (of one model, or of all with None) in one time window."""
        scope = encode_token(model) if model is not None else "_all"
        return f"{self.namespace}.quota.{encode_token(consumer)}.{scope}.{window}.{period}"

    # replies and cancellation --------------------------------------------------------------
    def reply_inbox(self, ingress_id: str) -> str:
        """Wildcard one ingress subscribes to once; it then routes frames by request id."""
        return f"{self.namespace}.reply.{encode_token(ingress_id)}.*"

    def reply(self, ingress_id: str, request_id: str) -> str:
        return f"{self.namespace}.reply.{encode_token(ingress_id)}.{encode_token(request_id)}"

    @staticmethod
    def pulse_for(reply_to: str) -> str:
        """Where a worker sends batched liveness for requests whose replies go to `reply_to`."""
        return reply_to.rsplit(".", 1)[0] + "." + PULSE_TOKEN

    @staticmethod
    def is_pulse(subject: str) -> bool:
        return subject.endswith("." + PULSE_TOKEN)

    @staticmethod
    def request_id_from(subject: str) -> str:
        return decode_token(subject.rsplit(".", 1)[-1])

    def cancel(self, request_id: str) -> str:
        return f"{self.namespace}.cancel.{encode_token(request_id)}"

    @property
    def all_cancels(self) -> str:
        return f"{self.namespace}.cancel.*"

    def max_deliveries_advisory(self) -> str:
        return f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{self.request_stream}.*"
