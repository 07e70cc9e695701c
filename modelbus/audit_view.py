"""`modelbus audit` output for a person: tables with the text shortened (tools use `--json`)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
from rich.console import Group
from rich.table import Table

from dispatcher.audit.compare import answer_of, prompt_of, shorten


def query_table(records: list[dict[str, Any]], width: int = 60) -> Table:
    table = Table(title=f"{len(records)} audit records, newest first", title_justify="left")
    for column in (
        "time (UTC)",
        "request",
        "consumer",
        "model / version",
        "status",
        "tokens",
        "ms",
        "prompt",
        "answer",
    ):
        table.add_column(column, justify="right" if column in ("tokens", "ms") else "left", overflow="fold")
    for record in records:
        received = datetime.fromtimestamp(record["received_ms"] / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
        served = record.get("model_served") or record.get("model_requested") or record.get("endpoint") or ""
        version = record.get("version")
        finished = record.get("finished_ms")
        status = str(record.get("status", ""))
        if record.get("error_code"):
            status += f" {record['http_status']} {record['error_code']}"
        table.add_row(
            received,
            str(record.get("request_id", ""))[:12],
            str(record.get("consumer") or "-"),
            f"{served} / {version}" if version else served,
            status,
            str(record.get("total_tokens") or "-"),
            str(finished - record["received_ms"]) if finished else "-",
            shorten(prompt_of(record.get("input")), width),
            shorten(answer_of(record.get("output")), width),
        )
    return table


def compare_view(
    report: dict[str, Any], old: str, new: str, semantic: list[float] | None, width: int = 48
) -> Group:
    versions = Table(title=f"{report['model']}: {old} → {new}", title_justify="left")
    for column in ("version", "requests", "error rate", "prompt tok (avg)", "completion tok (avg)", "answer chars (avg)",
                   "p50 ms", "p95 ms", "finish reasons"):  # fmt: skip
        versions.add_column(column, justify="left" if column in ("version", "finish reasons") else "right")
    for name in (old, new):
        row = report["versions"].get(name)
        if row is None:
            versions.add_row(name, "0", *["-"] * 7)
            continue
        reasons = ", ".join(f"{k} {v}" for k, v in sorted((row.get("finish_reasons") or {}).items()))
        versions.add_row(
            name,
            str(row.get("requests", 0)),
            f"{(row.get('error_rate') or 0) * 100:.1f} %",
            _number(row.get("avg_prompt_tokens")),
            _number(row.get("avg_completion_tokens")),
            _number(row.get("avg_output_chars")),
            _number(row.get("p50_latency_ms")),
            _number(row.get("p95_latency_ms")),
            reasons or "-",
        )
    pairs = report["pairs"]
    order = list(range(len(pairs)))
    if semantic is not None:
        order.sort(key=lambda i: semantic[i])
    ranked = Table(
        title=f"{len(pairs)} prompts answered by both, the answers that changed most first",
        title_justify="left",
    )
    ranked.add_column("text sim.", justify="right")
    if semantic is not None:
        ranked.add_column("meaning sim.", justify="right")
    for column in ("prompt", f"{old} answered", f"{new} answered"):
        ranked.add_column(column, overflow="fold")
    for i in order:
        pair = pairs[i]
        cells = [f"{pair['similarity']:.2f}"]
        if semantic is not None:
            cells.append(f"{semantic[i]:.2f}")
        cells += [
            shorten(prompt_of(pair.get("input")), width),
            shorten(answer_of(pair.get(old)), width),
            shorten(answer_of(pair.get(new)), width),
        ]
        ranked.add_row(*cells)
    return Group(versions, ranked)


def _number(value: Any) -> str:
    return "-" if value is None else f"{float(value):.1f}"


async def meaning_similarity(model_name: str, pairs: list[dict[str, Any]], old: str, new: str) -> list[float]:
    """Cosine similarity of each pair's two answers, embedded by `model_name` through the bus."""
    from dispatcher.bus.bus_settings import BusSettings
    from dispatcher.bus.client import BusClient
    from dispatcher.bus.connection import connect, supports_msg_ttl
    from dispatcher.bus.internal_calls import ask
    from dispatcher.bus.subjects import Subjects
    from dispatcher.config.config_file import load_config
    from dispatcher.config.config_store import ConfigStore, load_initial
    from schemas.envelope import Endpoint

    settings = BusSettings()
    subjects = Subjects(settings.namespace)
    nc = await connect(settings, name="modelbus-audit")
    try:
        js = nc.jetstream()
        config, _ = await load_initial(
            await ConfigStore.open(js, subjects, settings), load_config(settings.config)
        )
        model = config.model(model_name)
        if model is None or Endpoint.EMBEDDINGS not in model.endpoints:
            raise LookupError(f"{model_name!r} is no embeddings model of the applied configuration")
        bus = BusClient(nc, subjects, settings, f"audit-{int(time.time() * 1000)}", supports_msg_ttl(nc))
        await bus.start()
        texts = [answer_of(p.get(side)) or " " for p in pairs for side in (old, new)]
        vectors: list[list[float]] = []
        for start in range(0, len(texts), 64):
            batch = texts[start : start + 64]
            answer = await ask(bus, model, Endpoint.EMBEDDINGS, {"model": model.name, "input": batch}, 30.0)
            if answer is None:
                raise LookupError(f"{model_name!r} did not answer")
            vectors += [item["embedding"] for item in orjson.loads(answer)["data"]]
        matrix = np.asarray(vectors, dtype=np.float32)
        matrix /= np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
        return [float(matrix[2 * i] @ matrix[2 * i + 1]) for i in range(len(pairs))]
    finally:
        await nc.close()
