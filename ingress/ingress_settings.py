"""Settings of one ingress process."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from dispatcher.bus.bus_settings import BusSettings
from ingress.http_limits import HttpLimits


class IngressSettings(BusSettings):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    tls_cert: Path | None = Field(default=None, description="serve HTTPS with this certificate (PEM)")
    tls_key: Path | None = Field(default=None, description="private key of tls_cert (PEM)")
    ingress_id: str = Field(default_factory=lambda: uuid.uuid4().hex[:16])
    max_body_bytes: int = Field(default=4 * 1024 * 1024, gt=0, description="larger bodies get 413")
    default_timeout_s: float = Field(default=600.0, gt=0, description="deadline when the client sets none")
    max_timeout_s: float = Field(default=3600.0, gt=0)
    sse_keepalive_s: float = Field(default=10.0, gt=0, description="comment lines while queued")
    # HTTP limits (ingress/http_limits.py)
    max_header_bytes: int = Field(default=64 * 1024, ge=1024, description="larger request heads get 431")
    header_timeout_s: float = Field(default=10.0, gt=0, description="a head slower than this gets 408")
    body_timeout_s: float = Field(
        default=120.0, gt=0, description="a body not complete this long after its head gets 408"
    )
    keep_alive_timeout_s: int = Field(default=75, gt=0, description="idle keep-alive connections close")
    max_connections: int = Field(default=1000, gt=0, description="open connections past this get 503")
    # Large bodies are validated and scanned in worker processes (dispatcher/admission/offload.py)
    offload_min_bytes: int = Field(
        default=256 * 1024, gt=0, description="bodies this large are checked off the event loop"
    )
    offload_processes: int = Field(default=2, ge=1, description="worker processes for large bodies")
    # Batch files (ingress/routes/files_routes.py)
    max_upload_bytes: int = Field(default=200 * 1024 * 1024, gt=0, description="larger files get 413")
    storage_quota_bytes: int = Field(
        default=1024 * 1024 * 1024, gt=0, description="files one consumer may keep; past it uploads get 429"
    )
    ingress_metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="serve /metrics on this port (bound to metrics_host) instead of the API port",
    )
    api_schema: Literal["key", "public", "off"] = Field(
        default="key",
        description="/openapi.json: for any valid API key, for anyone, or not served",
    )

    def http_limits(self) -> HttpLimits:
        return HttpLimits(
            self.max_header_bytes, self.header_timeout_s, self.body_timeout_s, self.max_connections
        )

    @model_validator(mode="after")
    def _key_needs_cert(self) -> IngressSettings:
        if self.tls_key is not None and self.tls_cert is None:
            raise ValueError("tls_key is set without tls_cert")
        return self
