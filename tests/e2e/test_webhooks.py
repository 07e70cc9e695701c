"""Task webhooks on the real stack: forbidden addresses refused at creation, redirects recorded and
dead-lettered, signed deliveries to an allow-listed listener, and a black-hole receiver that stalls
nobody else's tasks. All traffic stays on loopback (private, link-local and metadata addresses are
refused before any connection; their resolution cases are in tests/unit/dispatcher/webhooks)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer, ThreadingHTTPServer
from typing import ClassVar

import httpx
import orjson
import pytest

from dispatcher.webhooks.signing import verify_signature, verify_standard
from modelbus.embedded_nats import free_port
from schemas.config import ModelConfig, SimulatorBackend
from tests.support.servers import OTHER_KEY, TEST_KEY, Cluster, sql, wait_until, with_consumers

AUTH = {"Authorization": f"Bearer {TEST_KEY}"}
OTHER = {"Authorization": f"Bearer {OTHER_KEY}"}
CHAT = {"model": "chat-sim", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
SECRET = "whsec_dGVzdC13ZWJob29rLXNlY3JldC0wMTIzNDU2Nzg5"


class _Hook(BaseHTTPRequestHandler):
    """An allow-listed receiver: 204, or a 307 to `redirect_to` when that is set."""

    received: ClassVar[list[tuple[dict[str, str], bytes]]] = []
    redirect_to: ClassVar[str | None] = None

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Hook.received.append((dict(self.headers), body))
        if _Hook.redirect_to and self.path == "/redirect":
            self.send_response(307)
            self.send_header("Location", _Hook.redirect_to)
        else:
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


class _Forbidden(BaseHTTPRequestHandler):
    """A loopback listener NOT on the allow-list (stands for /admin/keys and other internal ports)."""

    hits: ClassVar[int] = 0

    def do_POST(self) -> None:
        _Forbidden.hits += 1
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def _serve(handler: type[BaseHTTPRequestHandler]) -> HTTPServer:
    server = HTTPServer(("127.0.0.1", free_port()), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class BlackHole:
    """Accepts connections and never answers (nor reads): every attempt costs the sender a timeout."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(512)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.fixture
def hooks() -> Iterator[tuple[HTTPServer, HTTPServer, BlackHole]]:
    _Hook.received, _Hook.redirect_to, _Forbidden.hits = [], None, 0
    allowed, forbidden, hole = _serve(_Hook), _serve(_Forbidden), BlackHole()
    yield allowed, forbidden, hole
    allowed.shutdown()
    forbidden.shutdown()
    hole.close()


@pytest.fixture
def gateway(
    database_url: str, cluster: Cluster, hooks: tuple[HTTPServer, HTTPServer, BlackHole]
) -> Iterator[tuple[str, str]]:
    allowed, _, hole = hooks
    config = cluster.write_config(
        with_consumers([ModelConfig(name="chat-sim", backend=SimulatorBackend(ttft_ms=5, tokens_per_s=1000))])
    )
    cluster.env_overrides.update(
        {
            "MODELBUS_WEBHOOK_SECRET": SECRET,
            # Only these two loopback ports: the rest of loopback stays forbidden.
            "MODELBUS_WEBHOOK_ALLOW": f"127.0.0.1:{allowed.server_address[1]},127.0.0.1:{hole.port}",
            "MODELBUS_WEBHOOK_ATTEMPTS": "2",
            "MODELBUS_WEBHOOK_BACKOFF_S": "0.3",
        }
    )
    with cluster.together():
        cluster.dispatcher(config, database_url)
        cluster.worker("chat-sim", config, "w-chat")
        gateway = cluster.ingress(config, MODELBUS_DATABASE_URL=database_url)
    yield gateway, database_url


def _create(client: httpx.Client, url: str) -> httpx.Response:
    return client.post("/tasks", json={"endpoint": "chat.completions", "body": CHAT, "webhook": {"url": url}})


def _webhook_settled(client: httpx.Client, task_id: str, timeout: float = 30) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    task: dict[str, object] = {}
    while time.monotonic() < deadline:
        task = client.get(f"/tasks/{task_id}").json()
        webhook = task.get("webhook")
        if isinstance(webhook, dict) and webhook["state"] in ("delivered", "dead_lettered"):
            return webhook
        time.sleep(0.1)
    raise AssertionError(f"webhook of {task_id} never settled: {task}")


def _forbidden_urls(forbidden_port: int) -> dict[str, str]:
    """URL -> the rule its 400 must name. Every one is refused before any connection is made."""
    urls = {
        f"http://127.0.0.1:{forbidden_port}/admin/keys": "loopback",
        f"http://localhost:{forbidden_port}/": "loopback",
        f"http://2130706433:{forbidden_port}/": "loopback",
        f"http://0x7f000001:{forbidden_port}/": "loopback",
        f"http://0x7f.1:{forbidden_port}/": "loopback",
        f"http://0177.0.0.1:{forbidden_port}/": "loopback",
        f"http://127.1:{forbidden_port}/": "loopback",
        f"http://[::1]:{forbidden_port}/": "loopback",
        f"http://[::ffff:127.0.0.1]:{forbidden_port}/": "ipv4_embedded",
        "http://10.0.0.1/": "private",
        "http://192.168.1.20:8080/": "private",
        "http://169.254.10.10/": "link_local",
        "http://169.254.169.254/latest/meta-data/": "metadata",
        "http://metadata.google.internal/computeMetadata/v1/": "metadata",
        "http://[fd00:ec2::254]/": "metadata",
        "http://100.64.0.1/": "shared",
        "http://0.0.0.0/": "unspecified",
        "http://224.0.0.1/": "multicast",
        f"http://user:pass@127.0.0.1:{forbidden_port}/": "userinfo",
    }
    # A real host name resolving to loopback, answered locally (/etc/hosts), when the machine has one.
    name = socket.gethostname()
    if {info[4][0] for info in socket.getaddrinfo(name, None)} <= {"127.0.0.1", "127.0.1.1", "::1"}:
        urls[f"http://{name}:{forbidden_port}/"] = "loopback"
    return urls


def test_forbidden_webhook_addresses_are_400_naming_the_rule(
    gateway: tuple[str, str], hooks: tuple[HTTPServer, HTTPServer, BlackHole]
) -> None:
    base, _ = gateway
    forbidden_port = hooks[1].server_address[1]
    with httpx.Client(base_url=base, headers=AUTH, timeout=30) as client:
        for url, rule in _forbidden_urls(forbidden_port).items():
            response = _create(client, url)
            assert response.status_code == 400, (url, response.text)
            error = response.json()["error"]
            assert error["code"].startswith("webhook_"), (url, error)
            assert f"(rule: {rule})" in error["message"], (url, error)
            assert error["param"] == "webhook.url"
    assert _Forbidden.hits == 0


def test_signed_delivery_and_a_redirect_dead_lettered(
    gateway: tuple[str, str], hooks: tuple[HTTPServer, HTTPServer, BlackHole]
) -> None:
    base, database_url = gateway
    allowed, forbidden, _ = hooks
    port = allowed.server_address[1]
    _Hook.redirect_to = f"http://127.0.0.1:{forbidden.server_address[1]}/admin/keys"
    with httpx.Client(base_url=base, headers=AUTH, timeout=30) as client:
        good = _create(client, f"http://127.0.0.1:{port}/hook")
        bad = _create(client, f"http://127.0.0.1:{port}/redirect")
        assert good.status_code == bad.status_code == 202
        delivered = _webhook_settled(client, good.json()["id"])
        dead = _webhook_settled(client, bad.json()["id"])
    assert delivered["state"] == "delivered" and delivered["attempts"] == 1
    assert dead["state"] == "dead_lettered" and dead["attempts"] == 2
    assert dead["last_error"] == "redirect refused (HTTP 307)"
    assert _Forbidden.hits == 0  # the redirect was never followed
    headers, body = next(h for h in _Hook.received if h[0]["Modelbus-Task-Id"] == good.json()["id"])
    assert verify_signature(SECRET, headers["Modelbus-Signature"], body)
    assert verify_standard(
        SECRET, headers["webhook-id"], headers["webhook-timestamp"], headers["webhook-signature"], body
    )
    assert orjson.loads(body)["status"] == "completed"
    wait_until(
        lambda: (
            len(sql(database_url, "SELECT 1 FROM audit_log WHERE record::jsonb->>'endpoint' = 'webhook'"))
            == 2
        ),
        20,
        "webhook outcomes not audited",
    )
    rows = sql(database_url, "SELECT record FROM audit_log WHERE record::jsonb->>'endpoint' = 'webhook'")
    outcomes = {orjson.loads(r["record"])["request_id"]: orjson.loads(r["record"]) for r in rows}
    assert outcomes[bad.json()["id"]]["error_code"] == "webhook_dead_lettered"
    assert outcomes[bad.json()["id"]]["input"]["destination"] == f"http://127.0.0.1:{port}"
    assert outcomes[good.json()["id"]]["status"] == "served"


def test_a_black_hole_webhook_stalls_no_one_else(
    gateway: tuple[str, str], hooks: tuple[HTTPServer, HTTPServer, BlackHole]
) -> None:
    """100 tasks whose webhook never answers; another consumer's 1-token task still takes < 1 s (p95)."""
    base, _ = gateway
    hole = hooks[2]
    with httpx.Client(base_url=base, headers=AUTH, timeout=30) as client:
        ids = [_create(client, f"http://127.0.0.1:{hole.port}/hook").json()["id"] for _ in range(100)]
        wait_until(
            lambda: all(client.get(f"/tasks/{i}").json()["status"] == "completed" for i in ids[-5:]),
            30,
            "black-hole tasks did not complete",
        )
    wait_until(lambda: len(hole.held) >= 1, 10, "no webhook reached the black hole")
    latencies = []
    with httpx.Client(base_url=base, headers=OTHER, timeout=30) as client:
        for _ in range(20):
            started = time.monotonic()
            task_id = client.post("/tasks", json={"endpoint": "chat.completions", "body": CHAT}).json()["id"]
            while client.get(f"/tasks/{task_id}").json()["status"] not in ("completed", "failed"):
                time.sleep(0.01)
            latencies.append(time.monotonic() - started)
    latencies.sort()
    p95 = latencies[int(len(latencies) * 0.95) - 1]
    print(f"black-hole webhooks: other consumer's task p50 {latencies[9]:.3f}s p95 {p95:.3f}s")
    assert p95 < 1.0, latencies
    # Meanwhile the breaker stops the black hole from costing each webhook a full timeout: all 100
    # are dead-lettered (2 attempts here) long before 100 x 10 s, most without a connection.
    started = time.monotonic()
    with httpx.Client(base_url=base, headers=AUTH, timeout=30) as client:

        def webhooks() -> list[dict[str, object]]:
            return [client.get(f"/tasks/{i}").json()["webhook"] for i in ids]

        wait_until(
            lambda: all(w["state"] == "dead_lettered" for w in webhooks()),
            90,
            "black-hole webhooks not settled",
        )
        reasons = [str(w["last_error"]) for w in webhooks()]
    print(
        f"black-hole webhooks settled {time.monotonic() - started:.0f}s after the probes; "
        f"{len(hole.held)} connections; last errors: "
        f"{ {r: reasons.count(r) for r in set(reasons)} }"
    )
    assert reasons.count("circuit open") >= 80
    assert len(hole.held) <= 20


class _Holding(BaseHTTPRequestHandler):
    """Holds the first delivery open (the dispatcher dies meanwhile); accepts the ones after it."""

    arrivals: ClassVar[int] = 0
    first: ClassVar[threading.Event] = threading.Event()
    release: ClassVar[threading.Event] = threading.Event()
    delivered: ClassVar[list[bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Holding.arrivals += 1
        if _Holding.arrivals == 1:
            _Holding.first.set()
            _Holding.release.wait(60)
            return
        _Holding.delivered.append(body)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_a_delivery_in_flight_when_the_dispatcher_dies_is_delivered_after(
    database_url: str, cluster: Cluster
) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _Holding)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    config = cluster.write_config(
        with_consumers([ModelConfig(name="chat-sim", backend=SimulatorBackend(ttft_ms=5, tokens_per_s=1000))])
    )
    cluster.env_overrides.update(
        {
            "MODELBUS_WEBHOOK_SECRET": SECRET,
            "MODELBUS_WEBHOOK_ALLOW": f"127.0.0.1:{server.server_address[1]}",
            "MODELBUS_WEBHOOK_ACK_WAIT_S": "3",
        }
    )
    with cluster.together():
        dispatcher = cluster.dispatcher(config, database_url)
        cluster.worker("chat-sim", config, "w-chat")
        base = cluster.ingress(config, MODELBUS_DATABASE_URL=database_url)
    try:
        with httpx.Client(base_url=base, headers=AUTH, timeout=30) as client:
            task_id = _create(client, f"http://127.0.0.1:{server.server_address[1]}/hook").json()["id"]
            assert _Holding.first.wait(30), "the webhook was never attempted"
            dispatcher.kill()  # mid-attempt: nothing acked, nothing recorded
            assert client.get(f"/tasks/{task_id}").json()["webhook"]["state"] == "pending"
            cluster.dispatcher(config, database_url)
            webhook = _webhook_settled(client, task_id)
        assert webhook["state"] == "delivered" and webhook["attempts"] == 1
        assert len(_Holding.delivered) == 1 and orjson.loads(_Holding.delivered[0])["id"] == task_id
    finally:
        _Holding.release.set()
        server.shutdown()
