"""Settings of one worker process."""

from __future__ import annotations

import os
import socket

from pydantic import Field

from dispatcher.bus.bus_settings import BusSettings


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class WorkerSettings(BusSettings):
    model: str = Field(default="", description="the model this worker serves (config name)")
    version: str = "default"
    worker_id: str = Field(default_factory=_default_worker_id)
    max_concurrency: int | None = Field(default=None, ge=1, description="overrides the config")
    # One of several processes of one worker (`modelbus worker --processes N`): this one takes its
    # part of the slots, so the backend sees the concurrency it was configured for.
    capacity_parts: int = Field(default=1, ge=1)
    capacity_part: int = Field(default=0, ge=0)
    drain_timeout_s: float = Field(default=30.0, ge=0, description="grace for in-flight work on stop")
    local_retries: int = Field(default=2, ge=0, description="backend retries before the first token")
    affinity_steal_grace_ms: float = Field(
        default=10.0,
        ge=0,
        description="prefix affinity: how long another worker's new work waits before this one steals it",
    )
    affinity_guest_grace_ms: float = Field(
        default=50.0,
        ge=0,
        description="prefix affinity with guest slots: how long another worker's new work waits for a guest slot",
    )
    affinity_warm_limit_s: float = Field(
        default=1.0,
        ge=0,
        description="prefix affinity: a freed slot keeps its bucket unless another home bucket waited this long",
    )
    affinity_rescan_s: float = Field(
        default=1.0, gt=0, description="prefix affinity: every bucket is looked at at least this often"
    )
