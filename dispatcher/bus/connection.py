"""Connecting to NATS with options suited to a gateway that must ride through broker restarts."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError, NoServersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.errors import APIError, NoStreamResponseError, ServiceUnavailableError
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential,
)

from dispatcher.bus.bus_settings import BusSettings
from dispatcher.bus.nats_permissions import inbox_prefix
from dispatcher.errors import BusUnavailable, QueueFull

log = logging.getLogger(__name__)

# What a JetStream publish raises while the stream has no leader (an R3 election after a node
# loss takes seconds) or the connection is moving to another node: retried with the same
# Nats-Msg-Id, so a publish that did land is deduplicated. nats-py reports "no responders" to a
# JetStream publish as NoStreamResponseError, and "JetStream temporarily unavailable" as a 503.
TRANSIENT = (
    NatsTimeoutError,
    NoRespondersError,
    NoStreamResponseError,
    ServiceUnavailableError,
    asyncio.TimeoutError,
    ConnectionError,
)


_FIRST_RETRY_S = 0.05  # then doubled per attempt, at most 1 s apart

# JetStream API error codes for a stream at its limits with discard=new. The server sends them with
# status 503, like a leaderless stream, but retrying cannot make room: they are never transient.
_STREAM_FULL = {10077, 10078, 10047}


def _stream_full(exc: BaseException) -> bool:
    return isinstance(exc, APIError) and exc.err_code in _STREAM_FULL


def is_transient(exc: BaseException) -> bool:
    if _stream_full(exc):
        return False
    return isinstance(exc, TRANSIENT) or (isinstance(exc, APIError) and exc.code == 503)


async def publish_durably(
    js: JetStreamContext, subject: str, data: bytes, headers: dict[str, str], max_s: float
) -> PubAck:
    """Publish to a stream and await its PubAck, retrying transient failures for up to `max_s` with
    the same headers (so `Nats-Msg-Id` dedupes a retry of a publish that did land). Returns the
    PubAck (`duplicate`: the stream already had the message; `seq`: where it is stored); raises
    BusUnavailable, or QueueFull when the stream is full."""
    started = time.monotonic()
    try:
        try:
            ack = await js.publish(subject, data, timeout=2.0, headers=headers)
        except Exception as first:
            if not is_transient(first):
                raise
            # Only a failed first attempt builds the retry machinery (~22 µs of CPU per publish
            # otherwise, on every request's hot path).
            await asyncio.sleep(_FIRST_RETRY_S)
            async for attempt in AsyncRetrying(
                retry=retry_if_exception(is_transient),
                stop=stop_after_delay(max(0.0, max_s - (time.monotonic() - started))),
                wait=wait_exponential(multiplier=_FIRST_RETRY_S, max=1.0),
                reraise=True,
            ):
                with attempt:
                    ack = await js.publish(subject, data, timeout=2.0, headers=headers)
    except Exception as exc:
        if _stream_full(exc):
            raise QueueFull("the stream is full") from exc
        if isinstance(exc, TRANSIENT):
            raise BusUnavailable("JetStream did not confirm the publish in time") from exc
        if isinstance(exc, APIError):
            raise BusUnavailable(f"JetStream refused the publish: {exc.description}") from exc
        raise
    return ack


async def fetch_or_wait(sub: JetStreamContext.PullSubscription, batch: int, timeout: float) -> list[Msg]:
    """A pull that survives a fail-over: [] when nothing came, or JetStream is briefly away.

    During an R3 leader election or a reconnect a fetch fails with "no responders" or a 503 for a
    few seconds; a consumer loop that let that escape would stop for good (no audit rows, no task
    outcomes recorded) while its process looked healthy.
    """
    try:
        return await sub.fetch(batch, timeout=timeout)
    except (TimeoutError, NatsTimeoutError):
        return []
    except NatsError as exc:
        log.warning("fetch failed, retrying: %s", type(exc).__name__)
        await asyncio.sleep(min(timeout, 0.5))
        return []


async def connect(settings: BusSettings, name: str) -> NATS:
    """Connect with infinite reconnects and fast dead-connection detection.

    nats-py's defaults give up reconnecting after about two minutes and notice a dead peer only
    after 2 x 120 s of pings; a gateway must keep trying and notice within seconds.
    """

    async def on_error(exc: Exception) -> None:
        log.warning("nats error (%s): %s", name, exc)

    closing: list[NATS] = []

    async def on_disconnect() -> None:
        if not (closing and closing[0].is_closed):  # a close we asked for is no news
            log.warning("nats disconnected (%s)", name)

    async def on_reconnect() -> None:
        log.info("nats reconnected (%s)", name)

    options = auth_options(settings)
    # The first connection is retried too: processes may start before the broker is up.
    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type((OSError, NoServersError, asyncio.TimeoutError)),
        stop=stop_after_delay(settings.connect_wait_s),
        wait=wait_exponential(multiplier=0.1, max=2.0),
        before_sleep=lambda state: log.warning("waiting for NATS at %s", settings.nats_url),
        reraise=True,
    ):
        with attempt:
            nc = await _connect_once(settings, name, on_error, on_disconnect, on_reconnect, options)
            closing.append(nc)
            return nc
    raise AssertionError("unreachable")


async def _connect_once(
    settings: BusSettings,
    name: str,
    on_error: Callable[[Exception], Awaitable[None]],
    on_disconnect: Callable[[], Awaitable[None]],
    on_reconnect: Callable[[], Awaitable[None]],
    options: dict[str, object],
) -> NATS:
    return await nats.connect(
        servers=settings.nats_servers,
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        ping_interval=5,
        max_outstanding_pings=3,
        connect_timeout=5,
        allow_reconnect=True,
        # Without this, an unreachable first server fails the connect instead of trying the rest.
        dont_randomize=False,
        # Publishes made while reconnecting are buffered up to this size, then fail loudly.
        pending_size=64 * 1024 * 1024,
        # Draining at shutdown is bounded: a stuck subscription must not hold a process past its
        # orchestrator's grace period.
        drain_timeout=5,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        **options,
    )


def auth_options(settings: BusSettings) -> dict[str, object]:
    """Credentials, TLS and inbox prefix for `nats.connect`, from the settings."""
    options: dict[str, object] = {}
    if settings.nats_creds is not None:
        options["user_credentials"] = str(settings.nats_creds)
    if settings.nats_user is not None:
        options["user"] = settings.nats_user
        if settings.nats_password is not None:
            options["password"] = settings.nats_password.get_secret_value()
    prefix = settings.nats_inbox_prefix
    if prefix is None and settings.nats_user is not None:
        prefix = inbox_prefix(settings.namespace, settings.nats_user)
    if prefix is not None:
        # A restricted user may subscribe only to inboxes under its own prefix.
        options["inbox_prefix"] = prefix
    if settings.nats_tls_ca is not None or settings.nats_tls_cert is not None:
        context = ssl.create_default_context(
            cafile=str(settings.nats_tls_ca) if settings.nats_tls_ca is not None else None
        )
        if settings.nats_tls_cert is not None:
            key = str(settings.nats_tls_key) if settings.nats_tls_key is not None else None
            context.load_cert_chain(str(settings.nats_tls_cert), key)
        options["tls"] = context
    return options


def jetstream(nc: NATS, settings: BusSettings) -> JetStreamContext:
    """The JetStream context, in the hub's domain when this process sits behind a leaf node.

    A leaf-node server without JetStream of its own does not forward the plain `$JS.API` prefix;
    the hub's domain prefix (`$JS.<domain>.API`) is how its clients reach the hub's streams.
    """
    return nc.jetstream(domain=settings.js_domain)


def api_prefix(settings: BusSettings) -> str:
    """The JetStream API subject prefix matching `jetstream()`, for raw API requests."""
    return f"$JS.{settings.js_domain}.API" if settings.js_domain else "$JS.API"


def supports_msg_ttl(nc: NATS) -> bool:
    """Per-message TTL (`Nats-TTL`) arrived in nats-server 2.11."""
    version = nc.connected_server_version
    return (version.major, version.minor) >= (2, 11)
