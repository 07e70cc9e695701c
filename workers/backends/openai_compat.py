"""Adapter for any OpenAI-compatible HTTP server: vLLM, TGI Messages API, llama.cpp, Ollama /v1.

Streams are read as Server-Sent Events and yielded chunk by chunk; closing the iterator closes the
HTTP response, which aborts the generation on the server (all of the above stop on disconnect).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import httpx
import orjson

from schemas.config import OpenAIBackend
from schemas.envelope import Endpoint
from workers.backends.base import BackendError, Json

_PATHS = {
    Endpoint.CHAT: "chat/completions",
    Endpoint.COMPLETIONS: "completions",
    Endpoint.EMBEDDINGS: "embeddings",
}


class OpenAICompatBackend:
    def __init__(self, config: OpenAIBackend, model: str, max_concurrency: int) -> None:
        self._config = config
        self._served_model = config.served_model or model
        headers = {}
        if config.api_key_env:
            key = os.environ.get(config.api_key_env)
            if not key:
                raise ValueError(f"environment variable {config.api_key_env} (backend key) is empty")
            headers["Authorization"] = f"Bearer {key}"
        base_url = str(config.base_url).rstrip("/") + "/"
        self._client = httpx.AsyncClient(
            base_url=base_url,
            headers=headers,
            timeout=httpx.Timeout(
                connect=config.connect_timeout_s,
                read=config.read_timeout_s,
                write=config.connect_timeout_s,
                pool=None,  # waiting for a pooled connection is bounded by the request deadline
            ),
            # One connection per slot: the worker never has more in flight than max_concurrency.
            limits=httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency),
        )
        self._description = f"openai:{base_url}"

    @property
    def description(self) -> str:
        return self._description

    def _body(self, payload: Json, stream: bool) -> Json:
        body = {**payload, "model": self._served_model, "stream": stream}
        if stream:
            # Usage is needed for quotas and audit even when the client did not ask for it.
            body["stream_options"] = {**(payload.get("stream_options") or {}), "include_usage": True}
        else:
            body.pop("stream_options", None)
        return body

    async def complete(self, endpoint: Endpoint, payload: Json) -> Json:
        try:
            response = await self._client.post(_PATHS[endpoint], json=self._body(payload, False))
        except httpx.HTTPError as exc:
            raise BackendError(f"backend unreachable: {type(exc).__name__}", 503, True) from exc
        if response.status_code >= 400:
            raise _error(response.status_code, response.content)
        try:
            body: Json = orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            raise BackendError("backend returned invalid JSON", 502, True) from exc
        return body

    async def stream(self, endpoint: Endpoint, payload: Json) -> AsyncIterator[Json]:
        request = self._client.build_request("POST", _PATHS[endpoint], json=self._body(payload, True))
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise BackendError(f"backend unreachable: {type(exc).__name__}", 503, True) from exc
        try:
            if response.status_code >= 400:
                raise _error(response.status_code, await response.aread())
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue  # comments, event names, blank separators
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                try:
                    chunk = orjson.loads(data)
                except orjson.JSONDecodeError as exc:
                    raise BackendError("backend sent an invalid stream chunk", 502, False) from exc
                if isinstance(chunk, dict) and "error" in chunk:
                    raise BackendError(f"backend error mid-stream: {_message(chunk)}", 502, False)
                yield chunk
        except httpx.HTTPError as exc:
            raise BackendError(f"backend stream failed: {type(exc).__name__}", 502, False) from exc
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()


def _message(body: object) -> str:
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            return str(error.get("message", ""))[:500]
        if isinstance(error, str):
            return error[:500]
    return ""


def _error(status: int, content: bytes) -> BackendError:
    try:
        detail = _message(orjson.loads(content))
    except orjson.JSONDecodeError:
        detail = ""
    retryable = status >= 500 or status == 429
    text = f"backend answered {status}" + (f": {detail}" if detail else "")
    # A 4xx is the request's fault and is reported as such; anything else is the backend's.
    return BackendError(text, 400 if 400 <= status < 500 and status != 429 else 502, retryable)
