"""The floor for any Python gateway: a single-hop pass-through proxy with nothing in between.

    python -m bench.floor_proxy --port 8090 --upstream http://127.0.0.1:8000

A raw ASGI application on uvicorn (uvloop, httptools) that forwards each request's method, path,
body and content type to the upstream with one shared aiohttp session, and relays the answer's
status and body chunk by chunk as they arrive. No authentication, validation, routing, audit or
queue: what remains is the cost of an HTTP server and an HTTP client in one Python process, which
`bench/deployed.py` measures beside the gateways as the floor they can approach.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import aiohttp
import uvicorn

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class FloorProxy:
    def __init__(self, upstream: str) -> None:
        self._upstream = upstream.rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {"Content-Type": _header(scope, b"content-type") or "application/json"}
        assert self._session is not None
        async with self._session.request(
            scope["method"], self._upstream + scope["path"], data=bytes(body), headers=headers
        ) as response:
            out = [(b"content-type", response.headers.get("Content-Type", "application/json").encode())]
            await send({"type": "http.response.start", "status": response.status, "headers": out})
            async for chunk in response.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                # No pool limit below the load's concurrency: the proxy must never queue.
                connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=None)
                self._session = aiohttp.ClientSession(connector=connector)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._session is not None:
                    await self._session.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="base URL of the backend, without /v1")
    args = parser.parse_args()
    uvicorn.run(
        FloorProxy(args.upstream),
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
