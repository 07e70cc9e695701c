"""Settings of one ingress process."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from dispatcher.settings import BusSettings


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

    @model_validator(mode="after")
    def _key_needs_cert(self) -> IngressSettings:
        if self.tls_key is not None and self.tls_cert is None:
            raise ValueError("tls_key is set without tls_cert")
        return self
