"""The OpenAI Batch API's intake: check the input file, record the batch, and put its lines on the
batch-line stream. Each line is admitted when it runs (dispatcher/tasks/batch_feeder.py), under the
identity recorded here, exactly as a direct call would be; the collector finishes the batch when its
last line is done.

What can be known now is refused now, with the line number: a line that does not validate, names
an unknown model, or asks for a model the caller's roles do not grant for batch work.
"""

from __future__ import annotations

import time

from fastapi import Request
from nats.js import JetStreamContext
from pydantic import ValidationError

from dispatcher.admission.identity import Identity
from dispatcher.admission.live_config import LiveConfig
from dispatcher.admission.validation import invalid, validate
from dispatcher.batches import BatchStore
from dispatcher.client import BusClient
from dispatcher.errors import InvalidRequest, ModelbusError, Refused
from dispatcher.subjects import Subjects
from dispatcher.tasks.batch_feeder import line_task_id, queue_lines
from ingress.errors import APIError
from schemas.batches import COMPLETION_WINDOW_S, Batch, BatchCreate, BatchLine, QueuedLine
from schemas.endpoints import BY_PATH

MAX_LINES = 50_000


class BatchIntake:
    def __init__(
        self, store: BatchStore, js: JetStreamContext, bus: BusClient, live: LiveConfig, subjects: Subjects
    ) -> None:
        self._store = store
        self._js = js
        self._bus = bus
        self._live = live
        self._subjects = subjects

    async def create(self, request: Request, identity: Identity, create: BatchCreate) -> Batch:
        content = await self._store.file_content(identity.consumer, create.input_file_id)
        if content is None:
            raise APIError(404, f"no file {create.input_file_id!r}", "file_not_found", "input_file_id")
        lines = self._check(identity, create, content)
        batch_id = await self._store.create_batch(
            identity.consumer, create.endpoint, create.input_file_id, len(lines), create.metadata
        )
        deadline_ms = int(time.time() * 1000) + COMPLETION_WINDOW_S * 1000
        snapshot = identity.snapshot()
        traceparent = request.headers.get("traceparent")
        queued = [
            QueuedLine(
                batch_id=batch_id,
                index=index,
                custom_id=line.custom_id,
                url=line.url,
                body=line.body,
                identity=snapshot,
                traceparent=traceparent,
                deadline_ms=deadline_ms,
            )
            for index, line in enumerate(lines)
        ]
        try:
            await queue_lines(self._js, self._subjects, queued)
        except ModelbusError:
            # Lines already queued find their batch failed and are dropped by the feeder.
            await self._store.set_status(
                batch_id, "failed", "completed_at", {"message": "the lines could not be queued; retry"}
            )
            raise
        await self._store.set_status(batch_id, "in_progress", "in_progress_at")
        batch = await self._store.batch(batch_id)
        assert batch is not None
        return batch

    def _check(self, identity: Identity, create: BatchCreate, content: bytes) -> list[BatchLine]:
        spec = BY_PATH[create.endpoint]
        revision = self._live.current
        lines: list[BatchLine] = []
        models: set[str] = set()
        for number, raw in enumerate(content.splitlines(), start=1):
            if not raw.strip():
                continue
            if len(lines) == MAX_LINES:
                raise APIError(400, f"a batch holds at most {MAX_LINES} requests", "invalid_batch_file")
            try:
                line = BatchLine.model_validate_json(raw)
                if line.url != create.endpoint:
                    raise APIError(
                        400,
                        f"line {number}: url {line.url} differs from the batch endpoint",
                        "invalid_batch_line",
                    )
                model: str = validate(spec.schema, line.body).model  # type: ignore[attr-defined]
                if model not in models:
                    # RBAC before the lookup, as for a direct call: a caller cannot probe for models.
                    if not revision.authorizer.permits(identity.roles, model, "batch"):
                        raise APIError(
                            403,
                            f"line {number}: your roles do not allow batch on the model {model!r}",
                            "permission_denied",
                        )
                    revision.catalog.resolve(model, spec.endpoint)
                    models.add(model)
            except ValidationError as exc:
                refusal = invalid(exc)
                raise APIError(400, f"line {number}: {refusal.message}", "invalid_batch_line") from None
            except InvalidRequest as exc:
                raise APIError(400, f"line {number}: {exc.message}", "invalid_batch_line") from None
            except Refused as exc:
                raise APIError(exc.status, f"line {number}: {exc.message}", exc.code, exc.param) from None
            lines.append(line)
        if not lines:
            raise APIError(400, f"a batch holds 1 to {MAX_LINES} requests", "invalid_batch_file")
        if len({line.custom_id for line in lines}) != len(lines):
            raise APIError(400, "custom_id values must be unique within a batch", "invalid_batch_file")
        return lines

    async def cancel(self, identity: Identity, batch_id: str) -> Batch:
        batch = await self._store.batch(batch_id, identity.consumer)
        if batch is None:
            raise APIError(404, f"no batch {batch_id!r}", "batch_not_found")
        if batch.status in ("validating", "in_progress"):
            await self._store.set_status(batch_id, "cancelling", "cancelling_at")
            # Lines still waiting for admission are failed by the feeder; these stop queued ones.
            for index in range(batch.request_counts.total):
                await self._bus.cancel(line_task_id(batch_id, index))
            batch = await self._store.batch(batch_id)
            assert batch is not None
        return batch
