"""Adapter for any OpenAI-compatible HTTP server: vLLM, TGI Messages API, llama.cpp, Ollama /v1.

Streams are read as Server-Sent Events and yielded chunk by chunk; closing the iterator closes the
HTTP connection, which aborts the generation on the server (all of the above stop on disconnect).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import aiohttp
import orjson

from schemas.config import OpenAIBackend
from schemas.endpoints import ENDPOINTS
from schemas.envelope import Endpoint
from workers.backends.backend_errors import BackendError, backend_error, error_message
from workers.backends.base import Batch, Json

# A server restarting or shedding load answers these before generating anything: safe to retry.
_RETRY_STATUSES = frozenset({502, 503, 504})
_RETRY_BACKOFF_S = 0.05  # doubled per attempt: 50, 100, 200 ms for the default two or three retries

# A stream line longer than this (no newline in sight) is not an SSE event a server would send.
_MAX_LINE = 1024 * 1024  # aiohttp's line reader, used before, stopped at 128 KiB
_DONE: Json = {}  # compared by identity: the `[DONE]` line
# A quick backend's whole answer comes in a burst of writes, one per event (spread over a few ms
# when it serves many streams at once). After the first read of a stream the worker waits for more
# as long as each next event comes within _FIRST_LINGER_S, for _BURST_LINGER_S at most: a real
# model's next token is tens of ms away, so this adds 1 ms to its first token, once. After later
# reads, a loop turn (each only if the last one brought more), _BURST_TURNS at most per read.
_FIRST_LINGER_S = 0.001
_BURST_LINGER_S = 0.005
_BURST_TURNS = 4

# Generation endpoints whose streams end with a usage chunk only when asked for one.
_USAGE_ON_REQUEST = (Endpoint.CHAT, Endpoint.COMPLETIONS)


class OpenAICompatBackend:
    """aiohttp rather than httpx: on the worker's hot path its per-request cost is several times
    lower (measured in bench/overhead.py: httpx's pool bookkeeping dominated the worker profile)."""

    def __init__(self, config: OpenAIBackend, model: str, max_concurrency: int) -> None:
        self._config = config
        self._served_model = config.served_model or model
        self._headers = {"Content-Type": "application/json"}
        if config.api_key_env:
            key = os.environ.get(config.api_key_env)
            if not key:
                raise ValueError(f"environment variable {config.api_key_env} (backend key) is empty")
            self._headers["Authorization"] = f"Bearer {key}"
        self._base_url = str(config.base_url).rstrip("/") + "/"
        self._root_url = urlsplit(self._base_url)._replace(path="", query="", fragment="").geturl()
        self.native = frozenset(Endpoint(name) for name in config.native)
        self._max_concurrency = max_concurrency
        self._session: aiohttp.ClientSession | None = None
        self._description = f"openai:{self._base_url}"

    @property
    def description(self) -> str:
        return self._description

    def _client(self) -> aiohttp.ClientSession:
        # Created lazily: a session must be made inside the running event loop.
        if self._session is None:
            self._session = aiohttp.ClientSession(
                # One connection per slot: the worker never has more in flight than that.
                connector=aiohttp.TCPConnector(limit=self._max_concurrency, ttl_dns_cache=300),
                # Generations may take minutes: bound connecting and silence, not the total.
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=self._config.connect_timeout_s,
                    sock_read=self._config.read_timeout_s,
                ),
                # SSE lines (a chunk with long tool-call arguments) may exceed the 64 KiB default.
                read_bufsize=1 << 20,
            )
        return self._session

    def _body(self, endpoint: Endpoint, payload: Json, stream: bool) -> bytes:
        body = {**payload, "model": self._served_model}
        if ENDPOINTS[endpoint].streams:
            body["stream"] = stream
        if stream and endpoint in _USAGE_ON_REQUEST:
            # Usage is needed for quotas and audit even when the client did not ask for it.
            body["stream_options"] = {**(payload.get("stream_options") or {}), "include_usage": True}
        else:
            body.pop("stream_options", None)
        return orjson.dumps(body)

    def _url(self, endpoint: Endpoint) -> str:
        path = ENDPOINTS[endpoint].backend_path
        return self._root_url + path if path.startswith("/") else self._base_url + path

    async def _post(self, endpoint: Endpoint, payload: Json, stream: bool) -> aiohttp.ClientResponse:
        """The backend's answer, retried (`max_retries`) while nothing has been generated: a refused
        connection or a 502/503/504 from a server that is restarting or briefly overloaded. Later
        failures are the runner's to handle (redelivery to another worker, or an error frame)."""
        url, body = self._url(endpoint), self._body(endpoint, payload, stream)
        for attempt in range(self._config.max_retries + 1):
            last = attempt == self._config.max_retries
            try:
                response = await self._client().post(url, data=body, headers=self._headers)
            except (aiohttp.ClientError, TimeoutError) as exc:
                if last:
                    raise BackendError(f"backend unreachable: {type(exc).__name__}", 503, True) from exc
            else:
                if last or response.status not in _RETRY_STATUSES:
                    return response
                response.release()
            await asyncio.sleep(_RETRY_BACKOFF_S * 2**attempt)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def complete(self, endpoint: Endpoint, payload: Json) -> Json:
        response = await self._post(endpoint, payload, stream=False)
        try:
            content = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise BackendError(f"backend response failed: {type(exc).__name__}", 503, True) from exc
        finally:
            response.release()
        if response.status >= 400:
            raise backend_error(response.status, content)
        try:
            body: Json = orjson.loads(content)
        except orjson.JSONDecodeError as exc:
            raise BackendError("backend returned invalid JSON", 502, True) from exc
        return body

    async def stream(self, endpoint: Endpoint, payload: Json) -> AsyncIterator[Json]:
        batches = self.stream_batches(endpoint, payload)
        try:
            async for chunks, _ in batches:
                for chunk in chunks:
                    yield chunk
        finally:
            await batches.aclose()  # type: ignore[attr-defined]

    async def stream_batches(self, endpoint: Endpoint, payload: Json) -> AsyncIterator[Batch]:
        """The stream's chunks a read at a time: a quick backend's whole answer is often one read,
        and the worker then takes one step for it instead of one per chunk (and aiohttp's line
        iterator one call per line, blank ones too). The batch that `[DONE]` ends says so."""
        response = await self._post(endpoint, payload, stream=True)
        finished = False
        try:
            if response.status >= 400:
                raise backend_error(response.status, await response.read())
            content, partial, loop = response.content, b"", asyncio.get_running_loop()
            linger_until: float | None = None  # set at the first read
            burst_until = 0.0
            while data := await content.readany():  # b"": the end of the body
                chunks: list[Json] = []
                chunk: Json | None
                if linger_until is None:
                    burst_until = loop.time() + _BURST_LINGER_S
                    linger_until = loop.time() + _FIRST_LINGER_S
                turn = 0
                while turn <= _BURST_TURNS or loop.time() < linger_until:
                    if turn:
                        # A quick backend writes its events one by one: wait a moment for the rest
                        # of the burst, so that it leaves in one frame, not one per event.
                        data = await _more(content, linger_until)
                        if not data:
                            break
                        if loop.time() < burst_until:  # still coming quickly: wait for more
                            linger_until = min(loop.time() + _FIRST_LINGER_S, burst_until)
                    turn += 1
                    lines = (partial + data).split(b"\n") if partial else data.split(b"\n")
                    partial = lines.pop()
                    if len(partial) > _MAX_LINE:
                        raise BackendError("backend sent a stream line that is too long", 502, False)
                    for line in lines:
                        if not line:
                            continue  # the blank line after each event
                        if line.startswith(b"data: {"):  # the usual form, read without more ado
                            chunk = _chunk(line[6:])
                        else:
                            chunk = _event(line)
                            if chunk is _DONE:
                                finished = True
                                yield chunks, True
                                return
                            if chunk is None:
                                continue
                        chunks.append(chunk)
                if chunks:
                    yield chunks, False
            rest = _event(partial)  # a last line without its newline
            finished = True  # [DONE], or the end of a stream that has none (Responses, Messages)
            yield ([rest] if rest is not None and rest is not _DONE else []), True
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise BackendError(f"backend stream failed: {type(exc).__name__}", 502, False) from exc
        finally:
            if finished:
                response.release()  # keep the connection for the next request
            else:
                # Closing drops the connection, which makes the server stop generating.
                response.close()

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


async def _more(content: aiohttp.StreamReader, linger_until: float) -> bytes:
    """What else arrived: waited for until `linger_until` (the first read), else after one loop turn."""
    left = linger_until - asyncio.get_running_loop().time()
    if left <= 0:
        await asyncio.sleep(0)
        return content.read_nowait()
    try:
        async with asyncio.timeout(left):
            return await content.readany()
    except TimeoutError:
        return b""


def _event(raw: bytes) -> Json | None:
    """The chunk one SSE line carries; None for comments, event names and blank separators."""
    line = raw.strip()
    if not line.startswith(b"data:"):
        return None
    data = line[5:].strip()
    if data == b"[DONE]":
        return _DONE
    return _chunk(data)


def _chunk(data: bytes) -> Json:
    """The chunk in one event's data; a backend's error event raises."""
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise BackendError("backend sent an invalid stream chunk", 502, False) from exc
    if isinstance(chunk, dict) and ("error" in chunk or chunk.get("type") == "error"):
        # Chat streams put an `error` object in a chunk; Responses and Anthropic streams send an
        # event of type `error`.
        raise BackendError(f"backend error mid-stream: {error_message(chunk)}", 502, False)
    return chunk  # type: ignore[no-any-return]
