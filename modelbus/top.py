"""`modelbus top`: a live terminal view for ops.

Per model: queue depth and its trend, ack pending, redeliveries, workers and free slots (JetStream
consumer info and the worker registry), and requests/s, p50/p95 latency and tokens/s over the last
minute (from the audit stream, which every request passes through — nothing extra on the hot path).
Per consumer: usage this minute and today against its limits, and its cost today at the models'
prices (the quota counters).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

from nats.aio.client import Client as NATS
from rich.console import Group
from rich.live import Live
from rich.table import Table

from dispatcher.bus.bus_settings import BusSettings
from dispatcher.bus.connection import connect
from dispatcher.bus.subjects import Subjects
from dispatcher.config.config_file import load_config
from dispatcher.config.config_store import ConfigStore, load_initial
from dispatcher.errors import QuotaUnavailable
from dispatcher.policy.quotas import COST_UNIT, QuotaLedger
from dispatcher.scheduling.capacity_view import capacity_view, open_registry, share_rows
from dispatcher.telemetry.traffic_window import TrafficWatch
from modelbus.console import console
from schemas.capacity import ModelCapacity
from schemas.config import ModelbusConfig
from schemas.policy import Limits


class Top:
    def __init__(self, nc: NATS, subjects: Subjects, config: ModelbusConfig, settings: BusSettings) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._subjects = subjects
        self._config = config
        self._settings = settings
        self._traffic = TrafficWatch(nc, subjects)
        self._history: dict[tuple[str, str], deque[int]] = {}
        self._ledger = QuotaLedger(nc, subjects)

    async def start(self) -> None:
        await self._traffic.start()

    async def frame(self) -> Group:
        registry = await open_registry(self._js, self._subjects, self._settings)
        view = await capacity_view(self._js, self._subjects, registry, self._config)
        return Group(self._models(view), self._shares(view), await self._consumers())

    def _shares(self, view: list[ModelCapacity]) -> Table:
        table = Table(title="fair share (queued now; served over the last minute)", title_justify="left")
        for column in ("model", "consumer", "queued", "queued share", "served share"):
            table.add_column(column, justify="left" if column in ("model", "consumer") else "right")
        for row in view:
            rows = share_rows(row.shares, self._traffic.served_shares(row.model), self._config)
            staged = sum(r.queued for r in rows)
            for share in rows:
                table.add_row(
                    row.model,
                    share.consumer,
                    str(share.queued),
                    _pct(share.queued / staged if staged else None),
                    _pct(share.served_share),
                )
        return table

    def _models(self, view: list[ModelCapacity]) -> Table:
        table = Table(title=f"Modelbus — {time.strftime('%H:%M:%S')}", title_justify="left")
        for column in ("model", "version", "queued", "trend", "ack pending", "redelivered", "workers", "free slots",
                       "req/s", "p50", "p95", "tok/s", "affinity"):  # fmt: skip
            table.add_column(column, justify="left" if column in ("model", "version", "trend") else "right")
        for row in view:
            history = self._history.setdefault((row.model, row.version), deque(maxlen=10))
            history.append(row.queued)
            trend = _trend(history)
            traffic = self._traffic.figures(row.model)
            table.add_row(
                row.model,
                row.version,
                str(row.queued),
                trend,
                str(row.in_flight),
                str(row.redelivered),
                str(row.workers),
                f"{row.free_slots}/{row.capacity}",
                f"{traffic.requests_per_s:.1f}",
                _ms(traffic.p50_s),
                _ms(traffic.p95_s),
                f"{traffic.tokens_per_s:.0f}",
                _pct(row.affinity_hit_rate),
            )
        return table

    async def _used(self, consumer: str, model: str | None, window: str, period: str) -> int:
        try:
            return await self._ledger.value(self._subjects.quota(consumer, model, window, period))
        except QuotaUnavailable:
            return -1

    async def _against(
        self, consumer: str, model: str | None, window: str, period: str, limit: int | None
    ) -> str:
        """Usage against a limit; a window without a limit has no counter."""
        if limit is None:
            return "-"
        used = await self._used(consumer, model, window, period)
        return "?" if used < 0 else f"{used}/{limit}"

    async def _consumers(self) -> Table:
        table = Table(
            title="consumers (usage against limits; cost at the models' prices)", title_justify="left"
        )
        columns = ("consumer", "scope", "requests this min", "tokens this min", "tokens today", "cost today")
        for column in columns:
            table.add_column(column, justify="left" if column in ("consumer", "scope") else "right")
        now = time.time()
        minute = int(now // 60)
        day = time.strftime("%Y%m%d", time.gmtime(now))
        for consumer in self._config.consumers:
            # Every consumer has a row for all models (its cost); models it is limited on, one each.
            scopes: list[tuple[str | None, Limits]] = [(None, consumer.limits or Limits())]
            scopes += list(consumer.model_limits.items())
            for model, limits in scopes:
                name = consumer.name
                table.add_row(
                    name,
                    model or "all models",
                    await self._against(name, model, "rpm", str(minute), limits.requests_per_min),
                    await self._against(name, model, "tpm", str(minute), limits.tokens_per_min),
                    await self._against(name, model, "tpd", day, limits.tokens_per_day),
                    _money(await self._used(name, model, "cost", day), limits.cost_per_day),
                )
        return table


def _money(used: int, limit: float | None) -> str:
    if used < 0:
        return "?"
    spent = f"{used / COST_UNIT:.4f}"
    return f"{spent}/{limit:g}" if limit else spent


def _trend(history: deque[int]) -> str:
    if len(history) < 2:
        return "·"
    # Against two refreshes ago: recent enough to show a turn, long enough not to flicker.
    delta = history[-1] - history[max(0, len(history) - 3)]
    return f"↑ +{delta}" if delta > 0 else f"↓ {delta}" if delta < 0 else "→ 0"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f} ms"


async def run_top(interval_s: float, once: bool) -> None:
    settings = BusSettings()
    subjects = Subjects(settings.namespace)
    nc = await connect(settings, name="modelbus-top")
    try:
        store = await ConfigStore.open(nc.jetstream(), subjects, settings)
        config, _ = await load_initial(store, load_config(settings.config))
        top = Top(nc, subjects, config, settings)
        await top.start()
        terminal = console()
        if once:
            terminal.print(await top.frame())
            return
        with Live(await top.frame(), console=terminal, refresh_per_second=4, screen=False) as live:
            while True:
                await asyncio.sleep(interval_s)
                live.update(await top.frame())
    finally:
        await nc.close()
