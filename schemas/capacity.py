"""The live capacity view: what each worker reports, and what that adds up to per model."""

from __future__ import annotations

from pydantic import BaseModel, Field


class WorkerStatus(BaseModel):
    """A worker's heartbeat, refreshed every few seconds; it expires with the worker."""

    worker: str
    model: str
    version: str
    backend: str
    capacity: int
    in_flight: int
    served: int
    avg_service_ms: float | None = None
    updated_ms: int
    # Prefix affinity (models with `affinity`): requests taken from home and from stolen buckets.
    affinity_home: int | None = None
    affinity_stolen: int | None = None
    # Buckets it took work from lately: their union over the live workers is the active set that
    # every worker spreads with a bounded load (dispatcher/scheduling/affinity.py, assign_homes).
    affinity_active: list[int] | None = None
    # Its home buckets that carried work lately, longest held first: they stay with it.
    affinity_held: list[int] | None = None

    @property
    def free_slots(self) -> int:
        return max(0, self.capacity - self.in_flight)


class ConsumerShare(BaseModel):
    consumer: str  # the fair-share bucket: a consumer, or its share group
    queued: int  # staged, waiting for its fair share (all lanes)
    served_share: float | None = None  # of this model's answers over the last minute (where known)


class ModelCapacity(BaseModel):
    model: str
    version: str
    workers: int
    capacity: int
    free_slots: int
    queued: int  # waiting in the stream (all lanes)
    in_flight: int  # delivered to workers, not yet acked
    redelivered: int
    estimated_wait_s: float | None  # None: no live worker, the wait is unbounded
    staged: int = 0  # of `queued`: waiting for their consumer's fair share
    shares: list[ConsumerShare] = Field(default_factory=list)
    # Of the requests the live workers took from affinity buckets since they started: from home.
    affinity_hit_rate: float | None = None
