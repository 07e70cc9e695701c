"""Who may read `/metrics`, and the port workers and the dispatcher serve it on.

With `MODELBUS_METRICS_TOKEN` set, every process answers `/metrics` only to `Authorization: Bearer
<token>` (Prometheus: `authorization: {credentials_file: ...}` in the scrape config); without it the
scrape is open, as before, and the port binds loopback by default. The token is compared in constant
time and never logged. The port also answers `/healthz` without a token, for liveness probes.
"""

from __future__ import annotations

import hmac
import socket
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app
from pydantic import SecretStr

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]
_DENIED = b"metrics need 'Authorization: Bearer <metrics token>'\n"


def authorized(header: str | None, token: SecretStr | None) -> bool:
    """True when no token is configured, or `header` is `Bearer <token>`."""
    if token is None:
        return True
    scheme, _, given = (header or "").partition(" ")
    expected = token.get_secret_value().encode()
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected)


def guarded(app: WsgiApp, token: SecretStr | None) -> WsgiApp:
    def serve(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/healthz":  # for liveness probes, which carry no token
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok\n"]
        if not authorized(environ.get("HTTP_AUTHORIZATION"), token):
            start_response(
                "401 Unauthorized",
                [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer")],
            )
            return [_DENIED]
        return app(environ, start_response)

    return serve


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds would flood stderr."""


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # one thread per scrape, so a slow scraper holds up no other


class _Server6(_Server):
    address_family = socket.AF_INET6


def serve_metrics(host: str, port: int, token: SecretStr | None) -> Callable[[], None]:
    """Start `/metrics` on host:port in a daemon thread; returns the function that stops it."""
    server_class = _Server6 if ":" in host else _Server
    server = make_server(host, port, guarded(make_wsgi_app(), token), server_class, _Quiet)
    thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()

    return stop
