"""Uploaded files stored as 1 MiB chunks, written while the upload streams in and read back one
chunk per query: no query carries a whole file (a 50 MB bytea parameter held the ingress's event
loop for 1.5 s while asyncpg encoded and wrote it), and memory stays at about one chunk.

A file is written in one transaction: a refused or broken upload leaves nothing behind. Files
written whole (a batch's output) keep their bytes in `files.content`; readers take that first,
then the chunks.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Self

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from schemas.batches import FileObject

CHUNK_BYTES = 1024 * 1024


class FileWriter:
    """One file being uploaded. `async with store.new_file(...) as writer`, `await writer.write(...)`
    as bytes arrive, then `await writer.commit(filename, purpose)`; leaving the block without a
    commit rolls everything back."""

    def __init__(self, engine: AsyncEngine, consumer: str) -> None:
        self._engine = engine
        self._consumer = consumer
        self._conn: AsyncConnection | None = None
        self.id = "file-" + uuid.uuid4().hex
        self._pending = bytearray()
        self._seq = 0
        self.bytes = 0

    async def __aenter__(self) -> Self:
        self._conn = await self._engine.connect()
        await self._conn.begin()
        await self._conn.execute(
            text(
                "INSERT INTO files (id, consumer, filename, purpose, bytes, content) "
                "VALUES (:id, :consumer, '', '', 0, '')"
            ),
            {"id": self.id, "consumer": self._consumer},
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._conn is not None
        if self._conn.in_transaction():
            await self._conn.rollback()
        await self._conn.close()

    async def write(self, data: bytes) -> None:
        self._pending += data
        self.bytes += len(data)
        while len(self._pending) >= CHUNK_BYTES:
            await self._flush(bytes(self._pending[:CHUNK_BYTES]))
            del self._pending[:CHUNK_BYTES]

    async def commit(self, filename: str, purpose: str) -> FileObject:
        assert self._conn is not None
        if self._pending:
            await self._flush(bytes(self._pending))
            self._pending.clear()
        created: datetime = (
            await self._conn.execute(
                text(
                    "UPDATE files SET filename = :f, purpose = :p, bytes = :n WHERE id = :id RETURNING created_at"
                ),
                {"f": filename, "p": purpose, "n": self.bytes, "id": self.id},
            )
        ).scalar_one()
        await self._conn.commit()
        return FileObject(
            id=self.id,
            bytes=self.bytes,
            created_at=int(created.timestamp()),
            filename=filename,
            purpose=purpose,
        )

    async def _flush(self, chunk: bytes) -> None:
        assert self._conn is not None
        await self._conn.execute(
            text("INSERT INTO file_chunks (file_id, seq, data) VALUES (:id, :seq, :data)"),
            {"id": self.id, "seq": self._seq, "data": chunk},
        )
        self._seq += 1


async def read_chunks(engine: AsyncEngine, consumer: str, file_id: str) -> AsyncIterator[bytes] | None:
    """The file's bytes in chunks, one query each; None if the consumer has no such file."""
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT content, (SELECT count(*) FROM file_chunks WHERE file_id = :id) AS chunks "
                    "FROM files WHERE id = :id AND consumer = :c"
                ),
                {"id": file_id, "c": consumer},
            )
        ).first()
    if row is None:
        return None
    head, chunks = bytes(row.content), int(row.chunks)

    async def chunks_of() -> AsyncIterator[bytes]:
        if head:
            yield head
        for seq in range(chunks):
            async with engine.connect() as conn:
                data = await conn.scalar(
                    text("SELECT data FROM file_chunks WHERE file_id = :id AND seq = :seq"),
                    {"id": file_id, "seq": seq},
                )
            if data is not None:  # deleted meanwhile: the file ends here
                yield bytes(data)

    return chunks_of()
