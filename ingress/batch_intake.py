"""The OpenAI Batch API's intake: check the input file, record the batch, and put its lines on the
batch-line stream. Each line is admitted when it runs (dispatcher/jobs/batch_feeder.py), under the
identity recorded here, exactly as a direct call would be; the collector finishes the batch when its
last line is done.

What can be known now is refused now, with the line number: a line that does not validate, names
an unknown model, or asks for a model the caller's roles do not grant for batch work.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from fastapi import Request
from nats.js import JetStreamContext

from dispatcher.admission.identity import Identity
from dispatcher.admission.live_config import LiveConfig
from dispatcher.admission.offload import Offload
from dispatcher.bus.client import BusClient
from dispatcher.bus.subjects import Subjects
from dispatcher.errors import ModelbusError
from dispatcher.jobs.batch_feeder import line_task_id, queue_lines
from dispatcher.jobs.batch_store import BatchStore
from ingress.batch_files import LineRules, file_pieces, queued_piece
from ingress.error_responses import APIError
from schemas.batches import COMPLETION_WINDOW_S, Batch, BatchCreate, QueuedLine

# Publishes in flight while a batch is queued. Each ack wakes its publisher in the same loop
# iteration: 64 (the feeder's) made iterations long enough to delay /healthz on a busy machine;
# 16 still queue 50,000 lines in seconds.
_PUBLISHERS = 16


class BatchIntake:
    def __init__(
        self,
        store: BatchStore,
        js: JetStreamContext,
        bus: BusClient,
        live: LiveConfig,
        subjects: Subjects,
        max_line_bytes: int,
        offload: Offload,
    ) -> None:
        self._max_line_bytes = max_line_bytes
        self._offload = offload
        self._store = store
        self._js = js
        self._bus = bus
        self._live = live
        self._subjects = subjects

    async def create(self, request: Request, identity: Identity, create: BatchCreate) -> Batch:
        if await self._store.file(identity.consumer, create.input_file_id) is None:
            raise APIError(404, f"no file {create.input_file_id!r}", "file_not_found", "input_file_id")
        # Checked first (nothing is recorded for a file that fails), then made into batch-line
        # messages piece by piece as they are queued, both in the worker processes; the file is
        # read a chunk at a time, twice.
        rules = LineRules(identity, self._live.current, create.endpoint, self._max_line_bytes, self._offload)
        async for piece, number in file_pieces(await self._chunks(identity, create.input_file_id)):
            await rules.check(piece, number)
        rules.check_count()
        batch_id = await self._store.create_batch(
            identity.consumer, create.endpoint, create.input_file_id, rules.count, create.metadata
        )
        template = QueuedLine(
            batch_id=batch_id,
            index=0,
            custom_id="-",
            url=create.endpoint,
            body={},
            identity=identity.snapshot(),
            traceparent=request.headers.get("traceparent"),
            deadline_ms=int(time.time() * 1000) + COMPLETION_WINDOW_S * 1000,
        )

        async def messages() -> AsyncIterator[bytes]:
            index = 0
            async for piece, _ in file_pieces(await self._chunks(identity, create.input_file_id)):
                made = await self._offload.run(queued_piece, piece, index, template)
                index += len(made)
                for message in made:
                    yield message

        try:
            await queue_lines(self._js, self._subjects, batch_id, messages(), _PUBLISHERS)
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

    async def _chunks(self, identity: Identity, file_id: str) -> AsyncIterator[bytes]:
        chunks = await self._store.file_chunks(identity.consumer, file_id)
        if chunks is None:  # deleted meanwhile
            raise APIError(404, f"no file {file_id!r}", "file_not_found", "input_file_id")
        return chunks

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
