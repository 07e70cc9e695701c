"""Prometheus metrics every process exposes, named after the OpenTelemetry GenAI semantic conventions
where they exist (`gen_ai_*`) and `modelbus_*` otherwise.

Families are module-level singletons in the default registry (one registry per process). Hot paths
call `.labels(...)` on them with values from `labels.py`: models, versions and consumers the
configuration names (anything else is `unknown`), fixed sets sanitized — never request ids or text.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import REGISTRY, CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# Latency buckets from 1 ms to 5 min: gateway overheads sit at the bottom, generations at the top.
_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_TOKENS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144)

REQUESTS = Counter(
    "modelbus_requests", "Requests by outcome", ["model", "version", "consumer", "endpoint", "status"]
)
OPERATION_DURATION = Histogram(
    "gen_ai_client_operation_duration_seconds",
    "End-to-end duration of a model call as the client sees it",
    ["gen_ai_operation_name", "gen_ai_request_model", "status"],
    buckets=_SECONDS,
)
TIME_TO_FIRST_TOKEN = Histogram(
    "gen_ai_server_time_to_first_token_seconds",
    "From pick-up by a worker to the first token",
    ["gen_ai_request_model"],
    buckets=_SECONDS,
)
PHASE = Histogram(
    "modelbus_request_phase_seconds",
    "Where a request's time goes: gateway_overhead, queue_wait, time_to_first_token, inference, post_processing",
    ["phase", "model"],
    buckets=_SECONDS,
)
TOKEN_USAGE = Histogram(
    "gen_ai_client_token_usage",
    "Tokens per request, by type (input, output)",
    ["gen_ai_token_type", "gen_ai_request_model"],
    buckets=_TOKENS,
)
TOKENS = Counter("modelbus_tokens", "Tokens, by type (input, output)", ["model", "consumer", "type"])
RATE_LIMITED = Counter(
    "modelbus_ratelimit_rejections",
    "Requests refused by a rate limit or budget",
    ["consumer", "model", "limit"],
)
GUARDRAIL_ACTIONS = Counter(
    "modelbus_guardrail_actions", "Guardrail findings acted on", ["detector", "action", "direction"]
)
DEGRADATIONS = Counter("modelbus_degradations", "Requests served in a degraded way", ["model", "how"])
SEMANTIC_CACHE = Counter(
    "modelbus_semantic_cache_lookups",
    "Semantic cache lookups by result (hit, miss, unavailable: no embedding in time)",
    ["model", "result"],
)
COST = Counter(
    "modelbus_cost",
    "Token cost at the configured prices (models with `cost`), in the configuration's currency",
    ["model", "consumer"],
)
BACKGROUND_UP = Gauge(
    "modelbus_background_task_up",
    "1 while a supervised background task (watcher, consumer loop) runs, 0 while it is down",
    ["component", "task"],
)
BACKGROUND_RESTARTS = Counter(
    "modelbus_background_task_restarts", "Restarts of a supervised background task", ["component", "task"]
)

QUEUE_PENDING = Gauge("modelbus_queue_pending", "Requests waiting in JetStream", ["model", "version", "lane"])
QUEUE_ACK_PENDING = Gauge(
    "modelbus_queue_ack_pending", "Requests delivered, not yet acked", ["model", "version", "lane"]
)
QUEUE_REDELIVERED = Gauge(
    "modelbus_queue_redelivered", "Requests delivered more than once", ["model", "version", "lane"]
)
QUEUE_WAITING_PULLS = Gauge(
    "modelbus_queue_waiting_pulls", "Open pull requests of workers", ["model", "version", "lane"]
)
WORKERS = Gauge("modelbus_workers", "Live workers", ["model", "version"])
FREE_SLOTS = Gauge("modelbus_free_slots", "Free worker slots", ["model", "version"])

AUDIT_SINK_PENDING = Gauge(
    "modelbus_audit_sink_pending", "Audit events in JetStream not yet written to Postgres"
)
AFFINITY = Counter(
    "modelbus_affinity",
    "Requests of models with prefix affinity, by where the worker took them: home or stolen bucket",
    ["model", "result"],
)
WORKER_REQUESTS = Counter(
    "modelbus_worker_requests", "Requests a worker settled, by outcome", ["model", "outcome"]
)
BACKEND_CONNECTIONS = Gauge(
    "modelbus_backend_connections", "Worker connections to its backend", ["model", "state"]
)


# Families whose values are read at scrape time (below), for tools that check names statically.
CALLBACK_FAMILIES = (
    "modelbus_nats_connected",
    "modelbus_nats_reconnects_total",
    "modelbus_config_reloads_total",
    "modelbus_backend_connections",
    "modelbus_worker_in_flight",
)


class _Callbacks(Collector):
    """Values read at scrape time from objects that already keep them (no double bookkeeping)."""

    def __init__(self) -> None:
        self._sources: list[Callable[[], Iterable[Metric]]] = []

    def add(self, source: Callable[[], Iterable[Metric]]) -> None:
        self._sources.append(source)

    def collect(self) -> Iterable[Metric]:
        for source in self._sources:
            yield from source()


_CALLBACKS = _Callbacks()
REGISTRY.register(_CALLBACKS)


def watch_nats(nc: object, component: str) -> None:
    """`modelbus_nats_connected` and `modelbus_nats_reconnects_total` of one connection."""

    def collect() -> Iterable[Metric]:
        connected = GaugeMetricFamily(
            "modelbus_nats_connected", "1 while connected to NATS", labels=["component"]
        )
        connected.add_metric([component], 1.0 if getattr(nc, "is_connected", False) else 0.0)
        reconnects = CounterMetricFamily(
            "modelbus_nats_reconnects", "Reconnects to NATS", labels=["component"]
        )
        reconnects.add_metric([component], float(getattr(nc, "stats", {}).get("reconnects", 0)))
        return [connected, reconnects]

    _CALLBACKS.add(collect)


def watch_config(store: object, component: str) -> None:
    """`modelbus_config_reloads_total{result=applied|rejected}` from a ConfigStore's own counts."""

    def collect() -> Iterable[Metric]:
        family = CounterMetricFamily(
            "modelbus_config_reloads", "Configuration revisions", labels=["component", "result"]
        )
        family.add_metric([component, "applied"], float(getattr(store, "reloads", 0)))
        family.add_metric([component, "rejected"], float(getattr(store, "rejected", 0)))
        return [family]

    _CALLBACKS.add(collect)


def watch(source: Callable[[], Iterable[Metric]]) -> None:
    _CALLBACKS.add(source)
