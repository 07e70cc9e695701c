"""A minimal keep-alive HTTP/1.1 client for load generation: one connection, no pooling, no parsing
beyond what latency measurement needs, so the client costs little next to the servers measured."""

from __future__ import annotations

import asyncio
import time

_EVENT = b"data: {"


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> None:
        self._reader = reader
        self._writer = writer
        self._host = host

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 22)
        return cls(reader, writer, host)

    def close(self) -> None:
        self._writer.close()

    async def _send(self, path: str, payload: bytes, headers: dict[str, str]) -> None:
        lines = [f"POST {path} HTTP/1.1", f"Host: {self._host}", f"Content-Length: {len(payload)}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        self._writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + payload)
        await self._writer.drain()

    async def _head(self) -> tuple[int, dict[bytes, bytes]]:
        raw = await self._reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = raw[:-4].split(b"\r\n")
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        return int(status_line.split()[1]), headers

    async def _chunks(self):  # type: ignore[no-untyped-def]
        while True:
            size = int((await self._reader.readuntil(b"\r\n")).strip(), 16)
            if size == 0:
                await self._reader.readuntil(b"\r\n")
                return
            yield (await self._reader.readexactly(size + 2))[:-2]

    async def request(self, path: str, payload: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        await self._send(path, payload, headers)
        status, response_headers = await self._head()
        if b"content-length" in response_headers:
            return status, await self._reader.readexactly(int(response_headers[b"content-length"]))
        return status, b"".join([chunk async for chunk in self._chunks()])

    async def stream_first_token(self, path: str, payload: bytes, headers: dict[str, str]) -> float:
        """Send a streaming request; return perf_counter() at the first data event; drain the rest."""
        await self._send(path, payload, headers)
        status, _ = await self._head()
        if status != 200:
            raise RuntimeError(f"HTTP {status}")
        first = 0.0
        async for chunk in self._chunks():
            if not first and _EVENT in chunk:
                first = time.perf_counter()
        return first

    async def stream_count_events(self, path: str, payload: bytes, headers: dict[str, str]) -> int:
        await self._send(path, payload, headers)
        status, _ = await self._head()
        if status != 200:
            raise RuntimeError(f"HTTP {status}")
        count = 0
        tail = b""
        async for chunk in self._chunks():
            data = tail + chunk
            count += data.count(_EVENT)
            # Keep a partial marker that straddles two chunks, but never count one twice.
            tail = data[-(len(_EVENT) - 1) :] if not data.endswith(_EVENT) else b""
        return count
