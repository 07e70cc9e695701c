"""Files and batches in Postgres. A batch's lines run as async tasks on the batch lane; when the
last one is recorded, the batch is finalized into an output file and an error file."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from dispatcher.store.file_chunks import FileWriter, read_chunks
from schemas.batches import COMPLETION_WINDOW_S, Batch, FileObject, RequestCounts
from schemas.openai import error_body

_DONE = ("completed", "failed")


def _json(value: Any) -> Any:
    """jsonb read through a plain SQL query arrives as text."""
    return orjson.loads(value) if isinstance(value, (str, bytes)) else value


def _ts(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value is not None else None


class BatchStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    # files ---------------------------------------------------------------------------------
    async def add_file(self, consumer: str, filename: str, purpose: str, content: bytes) -> FileObject:
        file_id = "file-" + uuid.uuid4().hex
        async with self._engine.begin() as conn:
            row = (
                await conn.execute(
                    text(
                        "INSERT INTO files (id, consumer, filename, purpose, bytes, content) "
                        "VALUES (:id, :consumer, :filename, :purpose, :bytes, :content) RETURNING created_at"
                    ),
                    {
                        "id": file_id,
                        "consumer": consumer,
                        "filename": filename,
                        "purpose": purpose,
                        "bytes": len(content),
                        "content": content,
                    },
                )
            ).one()
        return FileObject(
            id=file_id,
            bytes=len(content),
            created_at=_ts(row.created_at) or 0,
            filename=filename,
            purpose=purpose,
        )

    async def stored_bytes(self, consumer: str) -> int:
        """What a consumer's files take (its storage quota is counted against this)."""
        async with self._engine.connect() as conn:
            used = await conn.scalar(
                text("SELECT COALESCE(SUM(bytes), 0) FROM files WHERE consumer = :c"), {"c": consumer}
            )
        return int(used or 0)

    async def file(self, consumer: str, file_id: str) -> FileObject | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT id, bytes, created_at, filename, purpose FROM files WHERE id = :id AND consumer = :c"
                    ),
                    {"id": file_id, "c": consumer},
                )
            ).first()
        if row is None:
            return None
        return FileObject(
            id=row.id,
            bytes=row.bytes,
            created_at=_ts(row.created_at) or 0,
            filename=row.filename,
            purpose=row.purpose,
        )

    async def files(self, consumer: str, limit: int = 100) -> list[FileObject]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT id, bytes, created_at, filename, purpose FROM files WHERE consumer = :c "
                    "ORDER BY created_at DESC LIMIT :n"
                ),
                {"c": consumer, "n": limit},
            )
            return [
                FileObject(
                    id=r.id,
                    bytes=r.bytes,
                    created_at=_ts(r.created_at) or 0,
                    filename=r.filename,
                    purpose=r.purpose,
                )
                for r in rows
            ]

    def new_file(self, consumer: str) -> FileWriter:
        """A file written in chunks as an upload streams in (dispatcher/store/file_chunks.py)."""
        return FileWriter(self._engine, consumer)

    async def file_chunks(self, consumer: str, file_id: str) -> AsyncIterator[bytes] | None:
        """The file's bytes, a chunk at a time; None if the consumer has no such file."""
        return await read_chunks(self._engine, consumer, file_id)

    async def file_content(self, consumer: str, file_id: str) -> bytes | None:
        chunks = await self.file_chunks(consumer, file_id)
        return None if chunks is None else b"".join([chunk async for chunk in chunks])

    async def delete_file(self, consumer: str, file_id: str) -> bool:
        async with self._engine.begin() as conn:
            result = await conn.execute(
                text("DELETE FROM files WHERE id = :id AND consumer = :c"), {"id": file_id, "c": consumer}
            )
        return bool(result.rowcount)

    # batches -------------------------------------------------------------------------------
    async def create_batch(
        self, consumer: str, endpoint: str, input_file_id: str, total: int, metadata: dict[str, str] | None
    ) -> str:
        batch_id = "batch_" + uuid.uuid4().hex
        async with self._engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO batches (id, consumer, status, endpoint, input_file_id, completion_window, total, "
                    "metadata, expires_at) VALUES (:id, :consumer, 'validating', :endpoint, :input, '24h', :total, "
                    "CAST(:metadata AS jsonb), :expires)"
                ),
                {
                    "id": batch_id,
                    "consumer": consumer,
                    "endpoint": endpoint,
                    "input": input_file_id,
                    "total": total,
                    "metadata": orjson.dumps(metadata).decode() if metadata else None,
                    "expires": datetime.now(UTC) + timedelta(seconds=COMPLETION_WINDOW_S),
                },
            )
        return batch_id

    async def set_status(
        self, batch_id: str, status: str, when_column: str | None = None, errors: dict[str, Any] | None = None
    ) -> None:
        stamp = f", {when_column} = now()" if when_column else ""
        async with self._engine.begin() as conn:
            await conn.execute(
                text(
                    f"UPDATE batches SET status = :s{stamp}, errors = COALESCE(CAST(:e AS jsonb), errors) "
                    "WHERE id = :id"
                ),
                {"s": status, "id": batch_id, "e": orjson.dumps(errors).decode() if errors else None},
            )

    async def batch(self, batch_id: str, consumer: str | None = None) -> Batch | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(text("SELECT * FROM batches WHERE id = :id"), {"id": batch_id})).first()
            if row is None or (consumer is not None and row.consumer != consumer):
                return None
            counts = (
                await conn.execute(
                    text(
                        "SELECT count(*) FILTER (WHERE status = 'completed') AS ok, "
                        "count(*) FILTER (WHERE status = 'failed') AS failed FROM tasks WHERE batch_id = :id"
                    ),
                    {"id": batch_id},
                )
            ).one()
        return Batch(
            id=row.id,
            endpoint=row.endpoint,
            errors=_json(row.errors),
            input_file_id=row.input_file_id,
            completion_window=row.completion_window,
            status=row.status,
            output_file_id=row.output_file_id,
            error_file_id=row.error_file_id,
            created_at=_ts(row.created_at) or 0,
            in_progress_at=_ts(row.in_progress_at),
            expires_at=_ts(row.expires_at),
            finalizing_at=_ts(row.finalizing_at),
            completed_at=_ts(row.completed_at),
            cancelling_at=_ts(row.cancelling_at),
            cancelled_at=_ts(row.cancelled_at),
            failed_at=_ts(row.completed_at) if row.status == "failed" else None,
            request_counts=RequestCounts(total=row.total, completed=counts.ok, failed=counts.failed),
            metadata=_json(row.metadata),
        )

    async def status(self, batch_id: str) -> str | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(text("SELECT status FROM batches WHERE id = :id"), {"id": batch_id})
            ).first()
        return str(row.status) if row is not None else None

    async def batches(self, consumer: str, limit: int = 20) -> list[Batch]:
        async with self._engine.connect() as conn:
            ids = [
                r.id
                for r in await conn.execute(
                    text("SELECT id FROM batches WHERE consumer = :c ORDER BY created_at DESC LIMIT :n"),
                    {"c": consumer, "n": limit},
                )
            ]
        found = [await self.batch(batch_id) for batch_id in ids]
        return [b for b in found if b is not None]

    async def finalize_if_done(self, batch_id: str) -> bool:
        """Called after each line is recorded: the last one builds the output and error files.

        The status change is a compare-and-set, so when two collectors race only one finalizes.
        """
        async with self._engine.begin() as conn:
            row = (
                await conn.execute(
                    text("SELECT consumer, total, status FROM batches WHERE id = :id FOR UPDATE"),
                    {"id": batch_id},
                )
            ).first()
            if row is None or row.status not in ("in_progress", "cancelling"):
                return False
            done = (
                await conn.execute(
                    text("SELECT count(*) FROM tasks WHERE batch_id = :id AND status = ANY(:done)"),
                    {"id": batch_id, "done": list(_DONE)},
                )
            ).scalar_one()
            if done < row.total:
                return False
            records = await conn.execute(
                text("SELECT record FROM tasks WHERE batch_id = :id ORDER BY line"), {"id": batch_id}
            )
            output, errors = _result_files([_json(r.record) for r in records])
            output_id = await self._store_result(conn, row.consumer, f"{batch_id}_output.jsonl", output)
            error_id = await self._store_result(conn, row.consumer, f"{batch_id}_error.jsonl", errors)
            final = "cancelled" if row.status == "cancelling" else "completed"
            stamp = "cancelled_at" if final == "cancelled" else "completed_at"
            await conn.execute(
                text(
                    f"UPDATE batches SET status = :s, output_file_id = :o, error_file_id = :e, "
                    f"finalizing_at = now(), {stamp} = now() WHERE id = :id"
                ),
                {"s": final, "o": output_id, "e": error_id, "id": batch_id},
            )
        return True

    async def _store_result(self, conn: Any, consumer: str, filename: str, content: bytes) -> str | None:
        if not content:
            return None
        file_id = "file-" + uuid.uuid4().hex
        await conn.execute(
            text(
                "INSERT INTO files (id, consumer, filename, purpose, bytes, content) "
                "VALUES (:id, :c, :f, 'batch_output', :b, :content)"
            ),
            {"id": file_id, "c": consumer, "f": filename, "b": len(content), "content": content},
        )
        return file_id


def _result_files(records: list[dict[str, Any]]) -> tuple[bytes, bytes]:
    """OpenAI's output-file lines (successes) and error-file lines (failures), in input order."""
    output: list[bytes] = []
    errors: list[bytes] = []
    for record in records:
        line_id = f"batch_req_{record['id']}"
        if record["status"] == "completed":
            response = {"status_code": 200, "request_id": record["request_id"], "body": record.get("result")}
            output.append(
                orjson.dumps(
                    {"id": line_id, "custom_id": record.get("custom_id"), "response": response, "error": None}
                )
            )
        else:
            error = record.get("error") or {"code": "failed", "message": "the request failed", "status": 500}
            status = error.get("status", 500)
            body = error_body(status, error.get("message") or "", error.get("code"), error.get("param"))
            errors.append(
                orjson.dumps(
                    {
                        "id": line_id,
                        "custom_id": record.get("custom_id"),
                        # The body a synchronous call would have been answered with.
                        "response": {
                            "status_code": status,
                            "request_id": record["request_id"],
                            "body": body.model_dump(),
                        },
                        "error": {"code": error.get("code"), "message": error.get("message")},
                    }
                )
            )
    join = b"\n".join
    return (join(output) + b"\n" if output else b""), (join(errors) + b"\n" if errors else b"")
