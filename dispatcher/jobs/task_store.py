"""Where a task's state lives: NATS KV (fast, shared by every ingress) and Postgres (the record).

KV is written first, so status and results stay readable while Postgres is away; the collector
then writes the same record to the `tasks` table, which keeps it after the KV entry expires.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import orjson
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from dispatcher.errors import TaskChanged
from schemas.tasks import Task

# Keep KV entries well under NATS max_payload; larger results live in Postgres only.
_KV_RESULT_LIMIT = 512 * 1024


class TaskStore:
    def __init__(self, kv: KeyValue, engine: AsyncEngine | None = None) -> None:
        self._kv = kv
        self._engine = engine

    async def create(self, task: Task) -> None:
        await self._kv.create(task.id, orjson.dumps(task.model_dump(mode="json")))

    async def create_once(self, task: Task) -> None:
        """Create the task's entry unless a concurrent retry of the same submission already did."""
        try:
            await self.create(task)
        except KeyWrongLastSequenceError:
            pass

    async def claim(self, consumer: str, idempotency_key: str, task_id: str) -> str:
        """The task id for this consumer's Idempotency-Key: `task_id` if new, else the earlier one."""
        digest = hashlib.sha256(f"{consumer}\n{idempotency_key}".encode()).hexdigest()
        key = f"idem.{digest}"
        try:
            await self._kv.create(key, task_id.encode())
            return task_id
        except KeyWrongLastSequenceError:
            entry = await self._kv.get(key)
            return (entry.value or b"").decode() or task_id

    async def get(self, task_id: str) -> Task | None:
        try:
            entry = await self._kv.get(task_id)
        except KeyNotFoundError:
            entry = None
        if entry is not None and entry.value:
            task = Task.model_validate_json(entry.value)
            if task.result is None and task.status == "completed" and self._engine is not None:
                return await self._from_db(task_id) or task  # the result was too large for KV
            return task
        return await self._from_db(task_id) if self._engine is not None else None

    async def get_versioned(self, task_id: str) -> tuple[Task, int | None] | None:
        """The task and the KV revision it was read at (None: only Postgres still has it)."""
        try:
            entry = await self._kv.get(task_id)
        except KeyNotFoundError:
            entry = None
        if entry is not None and entry.value:
            return Task.model_validate_json(entry.value), entry.revision
        found = await self._from_db(task_id) if self._engine is not None else None
        return (found, None) if found is not None else None

    async def update(self, task: Task, revision: int | None = None) -> None:
        """Status for every ingress to see; a large result is left to Postgres.

        With `revision` (what `get_versioned` returned) the write is a compare-and-set: TaskChanged if
        the entry moved on meanwhile, so a late "running" can never overwrite "completed"."""
        data = orjson.dumps(task.model_dump(mode="json"))
        if len(data) > _KV_RESULT_LIMIT:
            data = orjson.dumps(
                task.model_copy(update={"result": None, "request": None}).model_dump(mode="json")
            )
        if revision is None:
            await self._kv.put(task.id, data)
            return
        try:
            await self._kv.update(task.id, data, last=revision)
        except KeyWrongLastSequenceError:
            raise TaskChanged(task.id) from None

    async def persist(self, task: Task) -> None:
        if self._engine is None:
            return
        async with self._engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO tasks (id, consumer, status, endpoint, model, created_at, completed_at, record, "
                    "batch_id, line) VALUES (:id, :consumer, :status, :endpoint, :model, :created_at, "
                    ":completed_at, CAST(:record AS jsonb), :batch_id, :line) "
                    "ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, "
                    "completed_at = EXCLUDED.completed_at, record = EXCLUDED.record"
                ),
                {
                    "id": task.id,
                    "consumer": task.consumer,
                    "status": task.status.value,
                    "endpoint": task.endpoint,
                    "model": task.model,
                    "created_at": datetime.fromtimestamp(task.created_at, UTC),
                    "completed_at": (
                        datetime.fromtimestamp(task.completed_at, UTC) if task.completed_at else None
                    ),
                    "record": orjson.dumps(task.model_dump(mode="json")).decode(),
                    "batch_id": task.batch_id,
                    "line": task.line,
                },
            )

    async def _from_db(self, task_id: str) -> Task | None:
        assert self._engine is not None
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(text("SELECT record::text FROM tasks WHERE id = :id"), {"id": task_id})
            ).first()
        return Task.model_validate_json(row[0]) if row else None
