"""One webhook attempt against real listeners on loopback: signed, no redirects, the address checked
on the connection itself (a resolver stub stands in for DNS)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from dispatcher.webhooks.addresses import WebhookPolicy
from dispatcher.webhooks.sender import WebhookSender
from dispatcher.webhooks.signing import verify_signature, verify_standard
from modelbus.embedded_nats import free_port

SECRET = "whsec_" + "c2VjcmV0LWtleS1mb3ItdGVzdHMtMTIzNDU2Nzg5MA=="


@dataclass
class Listener:
    port: int
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    answer: int = 204
    location: str | None = None
    hang: bool = False
    release: asyncio.Event = field(default_factory=asyncio.Event)


@pytest.fixture
async def listener() -> AsyncIterator[Listener]:
    state = Listener(free_port())

    async def handle(request: web.Request) -> web.StreamResponse:
        state.received.append((dict(request.headers), await request.read()))
        if state.hang:
            await state.release.wait()
        headers = {"Location": state.location} if state.location else {}
        return web.Response(status=state.answer, headers=headers)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", state.port).start()
    yield state
    state.release.set()
    await runner.cleanup()


def _resolver(answers: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    async def resolve(host: str, port: int) -> list[str]:
        return answers[host]

    return resolve


async def test_allowed_listener_gets_a_signed_delivery(listener: Listener) -> None:
    policy = WebhookPolicy.build([f"127.0.0.1:{listener.port}"])
    sender = WebhookSender(policy, SECRET, timeout_s=5)
    try:
        attempt = await sender.post(f"http://127.0.0.1:{listener.port}/hook", "task_1", b'{"id":"task_1"}')
    finally:
        await sender.aclose()
    assert attempt.ok
    ((headers, body),) = listener.received
    assert body == b'{"id":"task_1"}'
    assert verify_signature(SECRET, headers["Modelbus-Signature"], body)
    assert not verify_signature("whsec_b3RoZXI=", headers["Modelbus-Signature"], body)
    assert verify_standard(
        SECRET, headers["webhook-id"], headers["webhook-timestamp"], headers["webhook-signature"], body
    )
    assert not verify_standard(
        SECRET, headers["webhook-id"], headers["webhook-timestamp"], headers["webhook-signature"], body + b" "
    )


async def test_a_redirect_is_a_failure_and_is_not_followed(listener: Listener) -> None:
    target_hits: list[bytes] = []
    target = Listener(free_port())
    app = web.Application()

    async def catch(request: web.Request) -> web.Response:
        target_hits.append(await request.read())
        return web.Response(status=204)

    app.router.add_route("*", "/{tail:.*}", catch)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", target.port).start()
    listener.answer, listener.location = 307, f"http://127.0.0.1:{target.port}/admin/keys"
    sender = WebhookSender(WebhookPolicy.build([f"127.0.0.1:{listener.port}"]), SECRET, timeout_s=5)
    try:
        attempt = await sender.post(f"http://127.0.0.1:{listener.port}/hook", "task_2", b"{}")
    finally:
        await sender.aclose()
        await runner.cleanup()
    assert not attempt.ok and attempt.reason == "redirect refused (HTTP 307)" and not attempt.permanent
    assert len(listener.received) == 1 and target_hits == []


async def test_a_name_that_now_resolves_to_loopback_is_not_connected(listener: Listener) -> None:
    """DNS rebinding: the name passed at task creation; at delivery it answers loopback."""
    answers = {"rebind.example": ["93.184.216.34"]}
    policy = WebhookPolicy.build([], resolver=_resolver(answers))
    url = f"http://rebind.example:{listener.port}/hook"
    assert (await policy.check(url)).host == "rebind.example"
    answers["rebind.example"] = ["127.0.0.1"]
    sender = WebhookSender(policy, SECRET, timeout_s=5)
    try:
        attempt = await sender.post(url, "task_3", b"{}")
    finally:
        await sender.aclose()
    assert not attempt.ok and attempt.reason == "refused at connect: loopback"
    assert listener.received == []


async def test_the_checked_address_is_dialled_with_the_name_kept(listener: Listener) -> None:
    policy = WebhookPolicy.build(["hooks.example"], resolver=_resolver({"hooks.example": ["127.0.0.1"]}))
    sender = WebhookSender(policy, SECRET, timeout_s=5)
    try:
        attempt = await sender.post(f"http://hooks.example:{listener.port}/h", "task_4", b"{}")
    finally:
        await sender.aclose()
    assert attempt.ok
    assert listener.received[0][0]["Host"] == f"hooks.example:{listener.port}"


async def test_forbidden_urls_fail_permanently_without_a_connection(listener: Listener) -> None:
    sender = WebhookSender(WebhookPolicy.build([]), SECRET, timeout_s=5)
    try:
        for url in (
            f"http://127.0.0.1:{listener.port}/",
            f"http://2130706433:{listener.port}/",
            f"http://127.1:{listener.port}/",
            f"http://u:p@127.0.0.1:{listener.port}/",
        ):
            attempt = await sender.post(url, "task_5", b"{}")
            assert not attempt.ok and attempt.permanent, url
    finally:
        await sender.aclose()
    assert listener.received == []


async def test_a_listener_that_never_answers_times_out(listener: Listener) -> None:
    listener.hang = True
    sender = WebhookSender(WebhookPolicy.build([f"127.0.0.1:{listener.port}"]), SECRET, timeout_s=0.5)
    started = asyncio.get_running_loop().time()
    try:
        attempt = await sender.post(f"http://127.0.0.1:{listener.port}/", "task_6", b"{}")
    finally:
        await sender.aclose()
    assert attempt.reason == "timeout"
    assert asyncio.get_running_loop().time() - started < 2


async def test_without_a_secret_nothing_is_sent_unsigned(listener: Listener) -> None:
    sender = WebhookSender(WebhookPolicy.build([f"127.0.0.1:{listener.port}"]), None, timeout_s=5)
    try:
        attempt = await sender.post(f"http://127.0.0.1:{listener.port}/hook", "task_9", b"{}")
    finally:
        await sender.aclose()
    assert not attempt.ok and attempt.permanent and "MODELBUS_WEBHOOK_SECRET" in str(attempt.reason)
    assert listener.received == []
