"""Signed checkpoints of the audit chain's head, kept outside Postgres.

The hash chain shows any row edited, removed or reordered *inside* the table, but a database
superuser who deletes the newest rows and rewinds `audit_chain_head` leaves a shorter chain that
still verifies. So after every commit the sink signs (Ed25519) the head it reached — sequence number,
row hash, time — and puts it in a JetStream KV bucket. `verify` then checks the table against the
newest checkpoint whose signature holds: the row at that sequence must exist with that hash, and the
head must not be behind it.

The private key lives only with the sink (the dispatcher, `MODELBUS_AUDIT_SIGNING_KEY`); verifiers
need the public key alone (`MODELBUS_AUDIT_VERIFY_KEY`), so neither the database nor the ingress can
produce a checkpoint.
"""

from __future__ import annotations

import base64
import logging
import time
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue
from pydantic import ValidationError

from dispatcher.audit.chain import Problem
from dispatcher.bus.bus_settings import BusSettings
from dispatcher.bus.subjects import Subjects
from dispatcher.bus.topology import ensure_bucket
from schemas.audit import AuditCheckpoint

log = logging.getLogger(__name__)

_KEY = "head"
_HISTORY = 64  # verify takes the highest signed head among these, so a replayed old one cannot win


def new_signing_key() -> str:
    """A fresh private key, base64 of its 32 raw bytes (what MODELBUS_AUDIT_SIGNING_KEY holds)."""
    raw = Ed25519PrivateKey.generate().private_bytes_raw()
    return base64.b64encode(raw).decode()


def signing_key(text: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(base64.b64decode(text.strip(), validate=True))


def verify_key_of(private: Ed25519PrivateKey) -> str:
    """The public half, base64 (what MODELBUS_AUDIT_VERIFY_KEY holds)."""
    raw = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def verify_key(text: str) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(base64.b64decode(text.strip(), validate=True))


def _message(seq: int, row_hash: str, at_ms: int) -> bytes:
    return f"modelbus-audit-head\n{seq}\n{row_hash}\n{at_ms}".encode()


def sign(private: Ed25519PrivateKey, seq: int, row_hash: str, at_ms: int | None = None) -> AuditCheckpoint:
    at_ms = int(time.time() * 1000) if at_ms is None else at_ms
    signature = private.sign(_message(seq, row_hash, at_ms))
    return AuditCheckpoint(
        seq=seq, row_hash=row_hash, at_ms=at_ms, signature=base64.b64encode(signature).decode()
    )


def signature_holds(checkpoint: AuditCheckpoint, public: Ed25519PublicKey) -> bool:
    try:
        public.verify(
            base64.b64decode(checkpoint.signature),
            _message(checkpoint.seq, checkpoint.row_hash, checkpoint.at_ms),
        )
    except (InvalidSignature, ValueError):
        return False
    return True


class CheckpointLog:
    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    @classmethod
    async def open(cls, js: JetStreamContext, subjects: Subjects, settings: BusSettings) -> CheckpointLog:
        description = "Modelbus signed audit heads (outside Postgres)"
        return cls(await ensure_bucket(js, settings, subjects.audit_checkpoint_bucket, description, _HISTORY))

    @classmethod
    async def find(cls, js: JetStreamContext, subjects: Subjects) -> CheckpointLog | None:
        """The bucket if it exists (verifiers never create it: an empty one would prove nothing)."""
        try:
            return cls(await js.key_value(subjects.audit_checkpoint_bucket))
        except NotFoundError:
            return None

    async def put(self, checkpoint: AuditCheckpoint) -> None:
        await self._kv.put(_KEY, checkpoint.model_dump_json().encode())

    async def history(self) -> list[AuditCheckpoint]:
        try:
            entries = await self._kv.history(_KEY)
        except (KeyNotFoundError, NotFoundError):
            return []
        found = []
        for entry in entries:
            try:
                found.append(AuditCheckpoint.model_validate_json(entry.value or b""))
            except ValidationError:
                found.append(AuditCheckpoint(seq=-1, row_hash="", at_ms=0, signature=""))  # fails to verify
        return found


def public_key(settings: BusSettings) -> Ed25519PublicKey | None:
    """The key that verifies checkpoints: configured, or derived from the signing key if this process
    has it; None when neither is set."""
    if settings.audit_verify_key:
        return verify_key(settings.audit_verify_key)
    if settings.audit_signing_key is not None:
        return signing_key(settings.audit_signing_key.get_secret_value()).public_key()
    return None


NOT_CHECKED = "checkpoints not checked: set MODELBUS_AUDIT_VERIFY_KEY to detect removal of the newest rows"


async def against_checkpoints(
    store: AuditStoreLike, js: JetStreamContext, subjects: Subjects, public: Ed25519PublicKey
) -> list[Problem]:
    """Problems of the table against every signed head the checkpoint bucket still holds."""
    found = await CheckpointLog.find(js, subjects)
    history = await found.history() if found is not None else []
    return await store.against_checkpoints(history, public)


class AuditStoreLike(Protocol):
    async def against_checkpoints(
        self, checkpoints: list[AuditCheckpoint], public: Ed25519PublicKey
    ) -> list[Problem]: ...


@dataclass
class Checkpointer:
    """What the sink calls after each commit: sign the head and put it, never failing the sink."""

    log: CheckpointLog
    key: Ed25519PrivateKey

    async def record(self, seq: int, row_hash: str) -> None:
        try:
            await self.log.put(sign(self.key, seq, row_hash))
        except Exception as exc:  # noqa: BLE001 - the next commit writes a newer head anyway
            log.warning("audit checkpoint at seq %d not stored: %s", seq, type(exc).__name__)


def check(
    checkpoints: list[AuditCheckpoint],
    public: Ed25519PublicKey,
    rows_by_seq: dict[int, str],
    head_seq: int,
    last_seq: int,
) -> list[Problem]:
    """Problems of the table against its signed heads. `rows_by_seq` maps the checkpoints' sequence
    numbers to the row hashes found in the table; `last_seq` is the table's highest sequence."""
    problems = [
        Problem(c.seq, "a checkpoint's signature does not verify (forged or written with another key)")
        for c in checkpoints
        if not signature_holds(c, public)
    ]
    signed = [c for c in checkpoints if signature_holds(c, public)]
    if not signed:
        if last_seq > 0:
            problems.append(
                Problem(last_seq, "no signed checkpoint: truncation of the newest rows cannot be ruled out")
            )
        return problems
    newest = max(signed, key=lambda c: c.seq)
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(newest.at_ms / 1000))
    if last_seq < newest.seq:
        problems.append(
            Problem(
                newest.seq,
                f"newest rows removed: the table ends at seq {last_seq}, but seq {newest.seq} was "
                f"committed and signed at {when}",
            )
        )
    elif rows_by_seq.get(newest.seq) != newest.row_hash:
        problems.append(Problem(newest.seq, f"the row differs from the one signed at {when}"))
    if head_seq < newest.seq:
        problems.append(
            Problem(head_seq, f"the chain head was rewound below seq {newest.seq} (signed at {when})")
        )
    return problems
