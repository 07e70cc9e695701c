"""The OpenAI Batch API's intake: check every line of the input file, then queue each on the batch
lane as an async task. The dispatcher's collector finishes the batch when its last line is done."""

from __future__ import annotations

import asyncio
import time

import orjson
from fastapi import Request
from pydantic import ValidationError

from dispatcher.batches import BatchStore
from dispatcher.client import BusClient
from dispatcher.subjects import Subjects
from dispatcher.tasks.store import TaskStore
from ingress.auth import Identity, authorize
from ingress.catalog import SCHEMAS
from ingress.errors import APIError
from ingress.live_config import LiveConfig
from ingress.routing import envelope_to
from schemas.batches import Batch, BatchCreate, BatchLine
from schemas.config import ModelConfig
from schemas.envelope import Endpoint, Lane
from schemas.tasks import Task, TaskStatus

_ENDPOINTS = {
    "/v1/chat/completions": Endpoint.CHAT,
    "/v1/completions": Endpoint.COMPLETIONS,
    "/v1/embeddings": Endpoint.EMBEDDINGS,
}
_MAX_LINES = 50_000
_PARALLEL = 64


class BatchIntake:
    def __init__(
        self, store: BatchStore, tasks: TaskStore, bus: BusClient, live: LiveConfig, subjects: Subjects
    ) -> None:
        self._store = store
        self._tasks = tasks
        self._bus = bus
        self._live = live
        self._subjects = subjects

    async def create(self, request: Request, identity: Identity, create: BatchCreate) -> Batch:
        content = await self._store.file_content(identity.consumer, create.input_file_id)
        if content is None:
            raise APIError(404, f"no file {create.input_file_id!r}", "file_not_found", "input_file_id")
        endpoint = _ENDPOINTS[create.endpoint]
        lines: list[tuple[BatchLine, ModelConfig]] = []
        for number, raw in enumerate(content.splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                line = BatchLine.model_validate_json(raw)
                SCHEMAS[endpoint].model_validate(line.body)
            except ValidationError as exc:
                error = exc.errors(include_url=False)[0]
                where = ".".join(str(p) for p in error["loc"])
                raise APIError(400, f"line {number}: {where}: {error['msg']}", "invalid_batch_line") from None
            if line.url != create.endpoint:
                raise APIError(
                    400,
                    f"line {number}: url {line.url} differs from the batch endpoint",
                    "invalid_batch_line",
                )
            model = str(line.body.get("model"))
            authorize(request, identity, model, "batch")
            target = self._live.catalog.resolve(model, endpoint)
            lines.append((line, target))
        if not lines or len(lines) > _MAX_LINES:
            raise APIError(400, f"a batch holds 1 to {_MAX_LINES} requests", "invalid_batch_file")
        if len({line.custom_id for line, _ in lines}) != len(lines):
            raise APIError(400, "custom_id values must be unique within a batch", "invalid_batch_file")
        batch_id = await self._store.create_batch(
            identity.consumer, create.endpoint, create.input_file_id, len(lines), create.metadata
        )
        deadline_ms = int(time.time() * 1000) + 24 * 3600 * 1000
        slots = asyncio.Semaphore(_PARALLEL)

        async def queue(index: int, line: BatchLine, target: ModelConfig) -> None:
            async with slots:
                await self._queue_line(
                    request, identity, batch_id, index, line, endpoint, target, deadline_ms
                )

        await asyncio.gather(*(queue(i, line, target) for i, (line, target) in enumerate(lines)))
        await self._store.set_status(batch_id, "in_progress", "in_progress_at")
        batch = await self._store.batch(batch_id)
        assert batch is not None
        return batch

    async def _queue_line(
        self,
        request: Request,
        identity: Identity,
        batch_id: str,
        index: int,
        line: BatchLine,
        endpoint: Endpoint,
        target: ModelConfig,
        deadline_ms: int,
    ) -> None:
        task_id = f"task_{batch_id.removeprefix('batch_')}_{index}"
        body = {**line.body, "stream": False} if endpoint is not Endpoint.EMBEDDINGS else dict(line.body)
        now_ms = int(time.time() * 1000)
        task = Task(
            id=task_id,
            status=TaskStatus.QUEUED,
            endpoint=endpoint.value,
            model=target.name,
            consumer=identity.consumer,
            key_id=identity.key_id,
            created_at=now_ms // 1000,
            request_id=task_id,
            deadline_ms=deadline_ms,
            request=body,
            batch_id=batch_id,
            line=index,
            custom_id=line.custom_id,
        )
        await self._tasks.create(task)
        envelope = envelope_to(
            target,
            identity.consumer,
            task_id,
            endpoint=endpoint,
            model=str(line.body.get("model")),
            lane=Lane.BATCH,
            key_id=identity.key_id,
            created_ms=now_ms,
            deadline_ms=deadline_ms,
            reply_to=self._subjects.task_reply(task_id),
            traceparent=request.headers.get("traceparent"),
            payload=body,
        )
        await self._bus.enqueue(envelope, orjson.dumps(body))

    async def cancel(self, identity: Identity, batch_id: str) -> Batch:
        batch = await self._store.batch(batch_id, identity.consumer)
        if batch is None:
            raise APIError(404, f"no batch {batch_id!r}", "batch_not_found")
        if batch.status in ("validating", "in_progress"):
            await self._store.set_status(batch_id, "cancelling", "cancelling_at")
            for index in range(batch.request_counts.total):
                await self._bus.cancel(f"task_{batch_id.removeprefix('batch_')}_{index}")
            batch = await self._store.batch(batch_id)
            assert batch is not None
        return batch
