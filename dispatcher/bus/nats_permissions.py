"""What each Modelbus component may publish and subscribe to on NATS, and the server config for it.

Pure data: no I/O. Every user gets its own inbox prefix (`inbox_prefix`), so a component can
subscribe only to its own request/response inboxes; JetStream API and KV subjects are granted per
stream, and a worker only for the consumers of the models it serves. Topology (streams, consumers,
buckets) is created by the dispatcher or an admin; restricted components only look it up.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from dispatcher.bus.subjects import Subjects, encode_token
from schemas.envelope import Lane

_JS = "$JS.API"


@dataclass(frozen=True, slots=True)
class Permissions:
    """Allow and deny lists of one NATS user; deny wins over allow on the server."""

    publish_allow: tuple[str, ...]
    subscribe_allow: tuple[str, ...]
    publish_deny: tuple[str, ...] = ()
    subscribe_deny: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class NatsUser:
    user: str
    permissions: Permissions
    # The bcrypt hash that goes into the server config; the plain password never does.
    password_hash: str = field(default="", repr=False)


def inbox_prefix(namespace: str, user: str) -> str:
    """One subject token per user: `_INBOX_<ns>_<user>` (namespaces have no `_`, so it is injective)."""
    return f"_INBOX_{namespace}_{encode_token(user)}"


def user_name(namespace: str, role: str, component_id: str = "") -> str:
    return f"{namespace}-{role}" + (f"-{component_id}" if component_id else "")


def _buckets(s: Subjects) -> tuple[str, ...]:
    return (
        s.config_bucket,
        s.worker_bucket,
        s.task_bucket,
        s.cache_bucket,
        s.semantic_cache_bucket,
        s.key_bucket,
        s.audit_checkpoint_bucket,
        s.response_bucket,
        s.share_lease_bucket,
    )


def _quota_use(s: Subjects) -> list[str]:
    """Add to usage counters (a JetStream publish answered with the new total) and read them."""
    return [s.all_quotas, f"{_JS}.DIRECT.GET.{s.quota_stream}.>"]


def _kv_stream(bucket: str) -> str:
    return f"KV_{bucket}"


def _kv_read(bucket: str) -> list[str]:
    """Look up a bucket, get keys (direct or via the stream) and watch it (ordered consumers)."""
    stream = _kv_stream(bucket)
    return [
        f"{_JS}.STREAM.INFO.{stream}",
        f"{_JS}.STREAM.MSG.GET.{stream}",
        f"{_JS}.DIRECT.GET.{stream}",
        f"{_JS}.DIRECT.GET.{stream}.>",
        f"{_JS}.CONSUMER.CREATE.{stream}",
        f"{_JS}.CONSUMER.CREATE.{stream}.>",
        f"{_JS}.CONSUMER.INFO.{stream}.*",
        f"{_JS}.CONSUMER.DELETE.{stream}.*",
        f"$JS.FC.{stream}.>",
    ]


def _kv_write(bucket: str, keys: str = ">") -> list[str]:
    return [f"$KV.{bucket}.{keys}"]


def _stream_admin(stream: str) -> list[str]:
    """Every JetStream API call on one stream and its consumers (for the dispatcher and admins)."""
    return [
        f"{_JS}.STREAM.*.{stream}",
        f"{_JS}.STREAM.MSG.*.{stream}",
        f"{_JS}.DIRECT.GET.{stream}",
        f"{_JS}.DIRECT.GET.{stream}.>",
        f"{_JS}.CONSUMER.*.{stream}",
        f"{_JS}.CONSUMER.*.{stream}.>",
        f"{_JS}.CONSUMER.*.*.{stream}.>",  # DURABLE.CREATE, MSG.NEXT
        f"$JS.ACK.{stream}.>",
        f"$JS.FC.{stream}.>",
    ]


def _streams(s: Subjects) -> list[str]:
    streams = [
        s.request_stream,
        s.dead_letter_stream,
        s.audit_stream,
        s.task_reply_stream,
        s.quota_stream,
        s.batch_line_stream,
        s.share_stream,
        s.webhook_stream,
    ]
    return streams + [_kv_stream(b) for b in _buckets(s)]


def ingress(namespace: str, ingress_id: str) -> Permissions:
    """Publish requests of any model and cancels; read only its own replies and inbox."""
    s = Subjects(namespace)
    user = user_name(namespace, "ingress", ingress_id)
    publish = [
        f"{_JS}.INFO",  # account limits: readiness
        s.all_requests,
        # Is a request silent across a reconnect still stored (queued, unsettled) or answered?
        f"{_JS}.STREAM.MSG.GET.{s.request_stream}",
        s.all_affinity_bells,  # "bucket k has work", after a publish to a prefix-affinity bucket
        s.all_shares,  # staged for the share feeder (dispatcher/scheduling/fair_share.py)
        s.share_bell,
        *_stream_admin(s.share_stream),  # the share feeder: its consumers, fetch, ack, subject counts
        *_kv_write(s.share_lease_bucket),
        s.all_cancels,
        s.all_batch_lines,  # a new batch's lines, admitted later by the dispatcher
        s.audit(f"ingress-{ingress_id}"),
        f"{_JS}.CONSUMER.INFO.{s.request_stream}.*",  # queue depth per model
        *_kv_write(s.task_bucket),
        *_kv_write(s.cache_bucket),
        *_kv_write(s.semantic_cache_bucket),
        *_kv_write(s.key_bucket),  # the admin API (RBAC: admin role) issues and revokes keys
        *_kv_write(s.response_bucket),  # DELETE /v1/responses/{id}
        *_quota_use(s),
    ]
    for bucket in _buckets(s):
        publish += _kv_read(bucket)
    return Permissions(
        publish_allow=tuple(publish),
        subscribe_allow=(s.reply_inbox(ingress_id), s.share_bell, f"{inbox_prefix(namespace, user)}.>"),
        subscribe_deny=(s.all_requests,),
    )


def worker(
    namespace: str,
    worker_id: str,
    models: Mapping[str, Sequence[str]],
    buckets: Mapping[str, int] | None = None,
) -> Permissions:
    """Pull and ack only the consumers of `models` (name -> versions; with `buckets`, model -> its
    prefix-affinity buckets, those too); reply, heartbeat, read config.

    A worker can publish reply frames (it must answer whichever ingress asked) but never subscribe to
    replies, requests or another model's consumer.
    """
    s = Subjects(namespace)
    user = user_name(namespace, "worker", worker_id)
    publish = [
        f"{_JS}.INFO",
        f"{s.namespace}.reply.*.*",
        s.all_task_replies,
        *_kv_read(s.config_bucket),
        f"{_JS}.STREAM.INFO.{_kv_stream(s.worker_bucket)}",
        s.all_quotas,  # settling token reservations with the backend's usage
        # Storing Responses API answers before they go out (any ingress may be asked to continue one).
        f"{_JS}.STREAM.INFO.{_kv_stream(s.response_bucket)}",
        *_kv_write(s.response_bucket),
    ]
    bells = []
    for model, versions in models.items():
        publish += _kv_write(s.worker_bucket, f"{encode_token(model)}.>")
        for version in versions:
            count = (buckets or {}).get(model, 0)
            if count:
                bells.append(s.affinity_bells(model, version))
            consumers = [s.consumer(model, version, lane) for lane in Lane]
            consumers += [s.affinity_consumer(model, version, k) for k in range(count)]
            for consumer in consumers:
                publish += [
                    f"{_JS}.CONSUMER.MSG.NEXT.{s.request_stream}.{consumer}",
                    f"{_JS}.CONSUMER.INFO.{s.request_stream}.{consumer}",
                    f"$JS.ACK.{s.request_stream}.{consumer}.>",
                ]
    return Permissions(
        publish_allow=tuple(publish),
        subscribe_allow=(s.all_cancels, *bells, f"{inbox_prefix(namespace, user)}.>"),
        subscribe_deny=(s.all_requests, f"{s.namespace}.reply.>"),
    )


def dispatcher(namespace: str) -> Permissions:
    """Owns the topology: every stream and bucket of the namespace, dead letters, audit, tasks; admits
    batch lines (RBAC, guardrails, quotas) and queues them like an ingress does."""
    s = Subjects(namespace)
    user = user_name(namespace, "dispatcher")
    publish = [
        f"{_JS}.INFO",
        s.all_dead_letters,
        f"{s.namespace}.reply.*.*",  # tells the waiting ingress a request was dead-lettered
        s.all_task_replies,
        s.all_webhooks,  # finished tasks' webhooks, queued for the delivery service
        s.audit("dispatcher"),
        s.all_requests,  # admitted batch lines, and calls to an injection classifier model
        s.all_affinity_bells,
        s.all_cancels,
        *_quota_use(s),
    ]
    for stream in _streams(s):
        publish += _stream_admin(stream)
    for bucket in _buckets(s):
        publish += _kv_write(bucket)
    return Permissions(
        publish_allow=tuple(publish),
        subscribe_allow=(
            s.max_deliveries_advisory(),
            s.reply_inbox(
                "dispatcher"
            ),  # answers of its classifier calls (dispatcher/process/dispatcher_service.py)
            f"{inbox_prefix(namespace, user)}.>",
        ),
    )


def admin(namespace: str) -> Permissions:
    """The `modelbus` CLI of an operator: everything in the namespace, including reading replies."""
    s = Subjects(namespace)
    user = user_name(namespace, "admin")
    base = dispatcher(namespace)
    publish = [*base.publish_allow, f"{s.namespace}.>", f"{_JS}.STREAM.NAMES", f"{_JS}.STREAM.LIST"]
    return Permissions(
        publish_allow=tuple(dict.fromkeys(publish)),
        subscribe_allow=(f"{s.namespace}.>", "$JS.EVENT.>", f"{inbox_prefix(namespace, user)}.>"),
    )


def _quoted(values: Iterable[str]) -> str:
    # JSON strings are valid NATS config strings; quoting keeps `$JS...` from reading as a variable.
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def _rule(allow: tuple[str, ...], deny: tuple[str, ...]) -> str:
    parts = [f"allow: {_quoted(allow)}"]
    if deny:
        parts.append(f"deny: {_quoted(deny)}")
    return "{ " + ", ".join(parts) + " }"


def render_server_config(users: Sequence[NatsUser]) -> str:
    """A nats-server `authorization { users = [...] }` block; include it in the server config."""
    lines = ["authorization {", "  users = ["]
    for entry in users:
        if not entry.password_hash.startswith("$2"):
            raise ValueError(f"user {entry.user!r} has no bcrypt password hash")
        p = entry.permissions
        lines += [
            "    {",
            f"      user: {json.dumps(entry.user)}",
            f"      password: {json.dumps(entry.password_hash)}",
            "      permissions: {",
            f"        publish: {_rule(p.publish_allow, p.publish_deny)}",
            f"        subscribe: {_rule(p.subscribe_allow, p.subscribe_deny)}",
            "      }",
            "    }",
        ]
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"


def hash_password(password: str) -> str:
    """bcrypt with the `$2a$` prefix, the spelling nats-server recognises as a hash."""
    import bcrypt

    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=11, prefix=b"2a")).decode()


@dataclass(frozen=True, slots=True)
class Component:
    role: str
    user: str
    permissions: Permissions
    manage_topology: bool


def components(
    namespace: str,
    ingress_ids: Sequence[str],
    workers: Mapping[str, Mapping[str, Sequence[str]]],
    buckets: Mapping[str, int] | None = None,
) -> list[Component]:
    """Every user of one deployment: dispatcher, admin, each ingress, each worker (id -> models)."""
    found = [
        Component("dispatcher", user_name(namespace, "dispatcher"), dispatcher(namespace), True),
        Component("admin", user_name(namespace, "admin"), admin(namespace), True),
    ]
    for ingress_id in ingress_ids:
        user = user_name(namespace, "ingress", ingress_id)
        found.append(Component("ingress", user, ingress(namespace, ingress_id), False))
    for worker_id, models in workers.items():
        user = user_name(namespace, "worker", worker_id)
        found.append(Component("worker", user, worker(namespace, worker_id, models, buckets), False))
    return found
