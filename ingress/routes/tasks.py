"""POST /v1/tasks and GET /v1/tasks/{id}: async inference."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from ingress.auth import Caller
from ingress.body import parse, read_body
from ingress.catalog import SCHEMAS
from ingress.live_config import live_config
from ingress.relay import Relay
from ingress.tasks import TaskIntake
from schemas.tasks import TaskCreate

router = APIRouter(prefix="/v1")


@router.post("/tasks")
async def create_task(request: Request, identity: Caller) -> Response:
    relay: Relay = request.app.state.relay
    intake: TaskIntake = request.app.state.tasks
    create = parse(TaskCreate, await read_body(request, relay.max_body))
    endpoint = create.bus_endpoint()
    parsed = parse(SCHEMAS[endpoint], orjson.dumps(create.body))
    target = live_config(request).catalog.resolve(parsed.model, endpoint)  # type: ignore[attr-defined]
    webhook = str(create.webhook.url) if create.webhook else None
    return await intake.accept(request, identity, endpoint, target, create.body, webhook)


@router.get("/tasks/{task_id}")
async def get_task(task_id: str, request: Request, identity: Caller) -> Response:
    intake: TaskIntake = request.app.state.tasks
    task = await intake.status(task_id, identity)
    return Response(orjson.dumps(task.public()), media_type="application/json")
