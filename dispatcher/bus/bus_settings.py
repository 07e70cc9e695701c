"""Settings every Modelbus process shares: where NATS is and how the bus behaves.

Each process has exactly one settings object, built once at start-up from `MODELBUS_*` environment
variables (or CLI flags) and passed down; nothing below reads the environment itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class BusSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MODELBUS_", extra="ignore")

    nats_url: str = Field(
        default="nats://127.0.0.1:4222",
        description="one or several comma-separated NATS URLs (all members of one cluster)",
    )
    connect_wait_s: float = Field(default=60.0, ge=0, description="how long to wait for NATS at start")
    nats_creds: Path | None = Field(default=None, description="NATS credentials file")
    nats_user: str | None = Field(default=None, description="NATS user (see `modelbus nats-config`)")
    nats_password: SecretStr | None = Field(default=None, description="password of nats_user")
    nats_tls_ca: Path | None = Field(default=None, description="CA that signed the NATS server's cert")
    nats_tls_cert: Path | None = Field(default=None, description="client certificate, if NATS asks")
    nats_tls_key: Path | None = Field(default=None, description="key of nats_tls_cert")
    nats_inbox_prefix: str | None = Field(
        default=None, description="inbox subject prefix; default `_INBOX_<ns>_<user>` when a user is set"
    )
    # Restricted NATS users may not create or change streams, consumers or buckets: they look them
    # up, and the dispatcher (or an admin) creates them.
    manage_topology: bool = Field(default=True, description="create streams, consumers and buckets")
    namespace: str = Field(default="mb", description="prefix of every subject, stream and bucket")
    config: Path | None = Field(default=None, description="Modelbus config file (YAML)")
    stream_replicas: int = Field(default=1, ge=1, le=5)
    js_domain: str | None = Field(
        default=None,
        description="JetStream domain of the hub, for a process attached through a leaf node",
    )

    # Delivery: a worker holds a request for ack_wait without news before JetStream redelivers it;
    # it sends in-progress acks well within that, so long generations never need a huge ack_wait.
    ack_wait_s: float = Field(default=10.0, gt=0)
    max_deliver: int = Field(default=4, ge=1)
    # Reply frames: a worker with nothing to send proves it is alive this often, and the ingress
    # declares it lost after idle_timeout_s of silence.
    heartbeat_s: float = Field(default=2.0, gt=0)
    idle_timeout_s: float = Field(default=7.0, gt=0)
    # The dispatcher's consumer loops (audit sink, task collector, batch feeder, webhook delivery)
    # wait this long in an idle pull; a stopping dispatcher waits for the pull in flight to end.
    idle_pull_s: float = Field(default=1.0, gt=0)

    # Off by default: staging costs every request a second JetStream write and a hop through the
    # feeder (+1.5 to 7.5 ms p50 on an idle model, docs/traffic.md) until unsaturated models bypass it.
    fair_share: bool = Field(
        default=False,
        description="weighted fair share among consumers of a saturated model (docs/traffic.md); "
        "off: one FIFO queue per model and lane",
    )
    fair_share_poll_s: float = Field(
        default=0.01, gt=0, le=1, description="how often the share feeder tops up ready queues while busy"
    )

    request_stream_max_age_s: float = Field(default=24 * 3600, gt=0)
    request_stream_max_bytes: int = Field(default=1 << 30, gt=0)
    request_stream_max_msgs: int = Field(default=1_000_000, gt=0)
    duplicate_window_s: float = Field(default=120.0, gt=0)
    # JetStream reserves each stream's max_bytes from its storage budget up front; size them so.
    audit_stream_max_bytes: int = Field(default=2 << 30, gt=0)
    dead_letter_max_bytes: int = Field(default=256 << 20, gt=0)
    database_url: str | None = Field(
        default=None, description="postgresql:// URL of the audit and task database"
    )
    cache_ttl_s: float = Field(default=3600.0, gt=0, description="how long cached answers may be served")
    semantic_cache_max_age_s: float = Field(
        default=24 * 3600, gt=0, description="semantic cache: no entry outlives this, whatever its ttl_s"
    )
    semantic_cache_max_bytes: int = Field(
        default=256 << 20, gt=0, description="semantic cache bucket size; the oldest entries go first"
    )
    task_timeout_s: float = Field(default=24 * 3600, gt=0, description="deadline of an async task")
    response_ttl_s: float = Field(
        default=30 * 24 * 3600, gt=0, description="how long stored Responses API responses are kept"
    )
    webhook_secret: SecretStr | None = Field(
        default=None, description="HMAC key that signs every task webhook (`modelbus up` makes one)"
    )
    webhook_allow: str = Field(
        default="",
        description="comma-separated CIDRs, IPs or host names (each with optional :port) that task "
        "webhooks may call although they are loopback, private, link-local or otherwise internal",
    )
    webhook_https_only: bool = Field(default=False, description="refuse http:// webhook URLs")
    webhook_attempts: int = Field(
        default=8, ge=1, le=50, description="tries before a webhook is dead-lettered"
    )
    webhook_backoff_s: float = Field(
        default=2.0, gt=0, description="wait after the first failed try; doubles"
    )
    webhook_max_backoff_s: float = Field(default=120.0, gt=0)
    webhook_timeout_s: float = Field(default=10.0, gt=0, description="one webhook attempt, connect to answer")
    webhook_per_destination: int = Field(
        default=4, ge=1, description="webhook attempts in flight to one scheme://host:port"
    )
    webhook_breaker_failures: int = Field(
        default=5, ge=1, description="failures in a row that open a destination's circuit"
    )
    webhook_ack_wait_s: float = Field(
        default=60.0, gt=0, description="a webhook held this long without news is delivered again"
    )
    webhook_breaker_cooldown_s: float = Field(default=30.0, gt=0, description="how long a circuit stays open")

    @property
    def webhook_allow_list(self) -> list[str]:
        return [entry.strip() for entry in self.webhook_allow.split(",") if entry.strip()]

    audit_signing_key: SecretStr | None = Field(
        default=None,
        description="dispatcher: Ed25519 private key (base64) that signs audit checkpoints outside Postgres",
    )
    audit_verify_key: str | None = Field(
        default=None,
        description="its public half (base64): `audit verify` checks the table against checkpoints",
    )
    max_ack_pending: int = Field(default=10_000, ge=1, description="in flight per model, all workers")

    # Telemetry: nothing leaves the process unless asked for.
    otlp_endpoint: str | None = Field(
        default=None, description="OTLP/HTTP traces endpoint, e.g. http://otel:4318/v1/traces"
    )
    trace_file: Path | None = Field(default=None, description="append finished spans as JSON lines here")
    metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="serve /metrics on this port (workers, dispatcher; the ingress then not on its API port)",
    )
    metrics_host: str = Field(default="127.0.0.1", description="address the /metrics port binds")
    metrics_token: SecretStr | None = Field(
        default=None, description="if set, /metrics answers only 'Authorization: Bearer <token>'"
    )
    log_format: Literal["json", "text"] = Field(default="json", description="json: one object per line")

    @property
    def nats_servers(self) -> list[str]:
        return [u.strip() for u in self.nats_url.split(",") if u.strip()]

    @field_validator("nats_url")
    @classmethod
    def _has_url(cls, value: str) -> str:
        if not any(u.strip() for u in value.split(",")):
            raise ValueError("at least one NATS URL is required")
        return value
