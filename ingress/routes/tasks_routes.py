"""POST /v1/tasks and GET /v1/tasks/{id}: async inference, admitted exactly like a direct call."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from dispatcher.webhooks.addresses import WebhookPolicy
from ingress.auth import Caller
from ingress.body import parse, read_body
from ingress.deps import ServicesDep
from schemas.tasks import TaskCreate

router = APIRouter(prefix="/v1")


@router.post("/tasks")
async def create_task(request: Request, identity: Caller, services: ServicesDep) -> Response:
    relay = services.relay
    create = parse(TaskCreate, await read_body(request, relay.max_body))
    webhook = str(create.webhook.url) if create.webhook else None
    if webhook is not None:
        # Refused before admission (nothing is spent on a task whose webhook may not be called);
        # the delivery service checks again on every connection, since DNS answers can change.
        settings = services.settings
        await WebhookPolicy.build(settings.webhook_allow_list, settings.webhook_https_only).check(webhook)
    body = orjson.dumps(create.body)
    return await relay.admit_and_run(request, identity, create.spec, body, True, webhook)


@router.get("/tasks/{task_id}")
async def get_task(task_id: str, identity: Caller, services: ServicesDep) -> Response:
    task = await services.tasks.status(task_id, identity)
    return Response(orjson.dumps(task.public()), media_type="application/json")
