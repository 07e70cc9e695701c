"""The ingress's services, built once in the lifespan and handed to routes as typed dependencies.

Routes declare what they use (`services: ServicesDep`, `identity: Caller`) instead of reading an
untyped `app.state`; the one place that knows where the services live is `services()` below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request
from starlette.types import Scope

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS
    from nats.js.kv import KeyValue
    from sqlalchemy.ext.asyncio import AsyncEngine

    from dispatcher.admission.live_config import LiveConfig
    from dispatcher.admission.offload import Offload
    from dispatcher.admission.pipeline import Admission
    from dispatcher.audit.publisher import AuditPublisher
    from dispatcher.bus.subjects import Subjects
    from dispatcher.caching.stored_responses import ResponseStore
    from dispatcher.config.config_store import ConfigStore
    from dispatcher.jobs.batch_store import BatchStore
    from dispatcher.policy.api_keys import KeyRegistry
    from dispatcher.process.supervisor import Supervisor
    from dispatcher.telemetry.traffic_window import TrafficWatch
    from ingress.batch_intake import BatchIntake
    from ingress.ingress_settings import IngressSettings
    from ingress.key_lookup import KeyRing
    from ingress.oidc import OidcVerifier
    from ingress.relay import Relay
    from ingress.task_intake import TaskIntake


@dataclass(frozen=True)
class Services:
    settings: IngressSettings
    nc: NATS
    subjects: Subjects
    supervisor: Supervisor
    live: LiveConfig
    keys: KeyRing
    oidc: OidcVerifier
    key_registry: KeyRegistry
    config_store: ConfigStore
    audit: AuditPublisher
    admission: Admission
    relay: Relay
    responses: ResponseStore  # stored Responses API answers (GET, DELETE, previous_response_id)
    tasks: TaskIntake
    workers: KeyValue  # the worker registry (capacity views)
    traffic: TrafficWatch
    engine: AsyncEngine | None  # None without MODELBUS_DATABASE_URL: no files, batches or audit API
    batches: BatchStore | None
    batch_intake: BatchIntake | None
    offload: Offload  # worker processes for large bodies and batch files


def services_of(scope: Scope) -> Services | None:
    """For ASGI middleware, which sees the scope before any dependency runs (None during start-up)."""
    found: Services | None = getattr(scope["app"].state, "services", None)
    return found


async def services(request: Request) -> Services:
    # `async` although it never awaits: FastAPI runs a plain `def` dependency in a worker thread,
    # and that hand-off (a thread wake-up and a loop wake-up per request) was 13 % of the ingress's
    # busy time at chat c=16 and ~0.5 ms of CPU per request at c=1 (docs/benchmarks.md, HTTP edge).
    found: Services = request.app.state.services
    return found


ServicesDep = Annotated[Services, Depends(services)]
