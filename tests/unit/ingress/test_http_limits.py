"""HTTP limits against a real ingress process: head size (431), head and body read timeouts (408 or
close), the connection cap (503); `/healthz` answers throughout."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import orjson
import pytest

from modelbus.embedded_nats import NatsServer
from schemas.config import ModelConfig, SimulatorBackend
from tests.support.health_probe import HealthProbe
from tests.support.servers import TEST_KEY, Cluster, with_consumers

HEADER_TIMEOUT_S = 2.0
BODY_TIMEOUT_S = 3.0


@pytest.fixture(scope="module")
def stack(nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One ingress for the module (a start costs ~3 s of CPU with its offload pool): every test here
    closes the connections it opened, so the next one finds the ingress idle, as a fresh one."""
    cluster = Cluster(tmp_path_factory.mktemp("limits"), nats_server.url, "t" + uuid.uuid4().hex[:10])
    yield cluster
    cluster.close()


@pytest.fixture(scope="module")
def gateway(stack: Cluster) -> str:
    """An ingress with short timeouts (2 s head, 3 s body) and a cap of 60 connections."""
    model = ModelConfig(name="chat-sim", max_concurrency=4, backend=SimulatorBackend(ttft_ms=5, capacity=4))
    config = stack.write_config(with_consumers([model]))
    return stack.ingress(
        config,
        MODELBUS_HEADER_TIMEOUT_S=str(HEADER_TIMEOUT_S),
        MODELBUS_BODY_TIMEOUT_S=str(BODY_TIMEOUT_S),
        MODELBUS_MAX_CONNECTIONS="60",
    )


def _address(gateway: str) -> tuple[str, int]:
    parts = urlsplit(gateway)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


def _read_all(sock: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes (b'' if it never does within `timeout`)."""
    sock.settimeout(timeout)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
        return received
    except TimeoutError:
        return b"<open>" + received


def test_head_past_64_kib_gets_431_without_reading_it_whole(gateway: str, stack: Cluster) -> None:
    host, port = _address(gateway)
    pid = stack.proc(f"ingress-{port}").popen.pid
    with socket.create_connection((host, port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
        sent = 0
        try:
            while sent < 64 * 1024 * 1024:  # the attack: a 64 MB header
                sock.sendall(b"a" * 65536)
                sent += 65536
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = _read_all(sock, 5)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert sent < 8 * 1024 * 1024  # refused near the limit, not after the whole header
    rss = next(
        line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmHWM")
    )
    print(
        f"\n64 MB header: 431 after the client sent {sent / 1024:.0f} KiB; ingress peak RSS {rss.split()[1]} kB"
    )
    error = orjson.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]
    assert error["code"] == "request_header_fields_too_large"
    # A head just under the limit is served.
    ok = httpx.get(gateway.removesuffix("/v1") + "/healthz", headers={"x-fill": "a" * 60_000})
    assert ok.status_code == 200


def test_slowloris_connections_are_closed_within_the_header_timeout(gateway: str) -> None:
    host, port = _address(gateway)
    socks = [socket.create_connection((host, port)) for _ in range(40)]
    started = time.monotonic()
    with HealthProbe(gateway) as probe:
        for sock in socks:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        # Trickle a header line now and then, as slowloris does, until the server closes.
        closed_at: dict[int, float] = {}
        while len(closed_at) < len(socks) and time.monotonic() - started < HEADER_TIMEOUT_S + 5:
            for n, sock in enumerate(socks):
                if n in closed_at:
                    continue
                try:
                    sock.sendall(b"X-a: b\r\n")
                    sock.setblocking(False)
                    if sock.recv(4096) == b"":
                        closed_at[n] = time.monotonic() - started
                except BlockingIOError:
                    pass
                except OSError:
                    closed_at[n] = time.monotonic() - started
                finally:
                    sock.setblocking(True)
            time.sleep(0.1)
    for sock in socks:
        sock.close()
    assert len(closed_at) == 40
    slowest = max(closed_at.values())
    print(
        f"\n40 slowloris connections closed after at most {slowest:.2f} s (header timeout {HEADER_TIMEOUT_S} s);"
        f" healthz p99 {probe.p99():.1f} ms over {len(probe.latencies)} probes"
    )
    assert slowest < HEADER_TIMEOUT_S + 1.0
    assert probe.failures == 0 and probe.p99() < 50


def test_a_connection_that_sends_nothing_is_closed_with_408(gateway: str) -> None:
    host, port = _address(gateway)
    with socket.create_connection((host, port)) as sock:
        started = time.monotonic()
        answer = _read_all(sock, HEADER_TIMEOUT_S + 3)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert time.monotonic() - started < HEADER_TIMEOUT_S + 1.0


def test_slow_body_is_cut_at_the_body_timeout(gateway: str) -> None:
    host, port = _address(gateway)
    with socket.create_connection((host, port)) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + TEST_KEY.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"
        )
        started = time.monotonic()
        sock.settimeout(0.5)
        answer = b""
        while time.monotonic() - started < BODY_TIMEOUT_S + 5:
            try:
                sock.sendall(b" ")  # one byte every half second
                chunk = sock.recv(4096)
                if chunk == b"":
                    break
                answer += chunk
            except TimeoutError:
                continue
            except OSError:
                break
        elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert BODY_TIMEOUT_S - 0.5 < elapsed < BODY_TIMEOUT_S + 1.5


def test_connections_past_the_cap_get_503_and_the_server_recovers(gateway: str) -> None:
    host, port = _address(gateway)
    held = [socket.create_connection((host, port)) for _ in range(60)]
    try:
        extra = socket.create_connection((host, port))
        answer = _read_all(extra, 3)
        extra.close()
        assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            if httpx.get(gateway.removesuffix("/v1") + "/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("the ingress did not answer after the held connections closed")
