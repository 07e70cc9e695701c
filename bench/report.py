"""Markdown tables from the results of `bench/gateway_overhead.py`, ready for docs/benchmarks.md."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

SCENARIO_TITLES = {
    "chat": "Non-streaming chat (latency to the last byte)",
    "stream": "Streaming chat (latency to the first content event, TTFT)",
    "embeddings": "Embeddings (latency to the last byte)",
}
_CPU_COLUMNS = ("client", "ingress", "worker", "nats-server", "simulator")


def _triple(latency: dict[str, float]) -> str:
    return f"{latency['p50']:.2f} / {latency['p95']:.2f} / {latency['p99']:.2f}"


def added(loads: dict[str, Any], scenario: str, concurrency: int) -> dict[str, float]:
    """Gateway percentile minus direct percentile, per percentile."""
    direct = loads[f"{scenario}@{concurrency}/direct"]["latency_ms"]
    gateway = loads[f"{scenario}@{concurrency}/gateway"]["latency_ms"]
    return {q: gateway[q] - direct[q] for q in direct}


def latency_table(loads: dict[str, Any], scenario: str, concurrencies: list[int]) -> str:
    rows = [
        f"#### {SCENARIO_TITLES[scenario]}",
        "",
        (
            "| c | direct p50 / p95 / p99 | gateway p50 / p95 / p99 | **added** p50 / p95 / p99 "
            "| direct req/s | gateway req/s |"
        ),
        "|---:|---|---|---|---:|---:|",
    ]
    for c in concurrencies:
        direct, gateway = loads[f"{scenario}@{c}/direct"], loads[f"{scenario}@{c}/gateway"]
        rows.append(
            f"| {c} | {_triple(direct['latency_ms'])} | {_triple(gateway['latency_ms'])} "
            f"| **{_triple(added(loads, scenario, c))}** | {direct['rps']:,.0f} | {gateway['rps']:,.0f} |"
        )
    return "\n".join(rows)


def cpu_table(loads: dict[str, Any], scenarios: list[str], concurrency: int) -> str:
    header = " | ".join(_CPU_COLUMNS)
    rows = [
        f"| run (c={concurrency}) | {header} | total |",
        "|---|" + "---:|" * (len(_CPU_COLUMNS) + 1),
    ]
    for scenario in scenarios:
        for path in ("direct", "gateway"):
            cpu = loads[f"{scenario}@{concurrency}/{path}"]["cpu_us_per_request"]
            cells = " | ".join(f"{cpu.get(name, 0.0):,.0f}" for name in _CPU_COLUMNS)
            rows.append(f"| {scenario} {path} | {cells} | {sum(cpu.values()):,.0f} |")
    return "\n".join(rows)


def relay_table(relays: dict[str, Any], streams: list[int]) -> str:
    rows = ["| concurrent streams | direct tokens/s | gateway tokens/s |", "|---:|---:|---:|"]
    for n in streams:
        direct = relays[f"relay@{n}/direct"]["tokens_per_s_median"]
        gateway = relays[f"relay@{n}/gateway"]["tokens_per_s_median"]
        rows.append(f"| {n} | {direct:,.0f} | **{gateway:,.0f}** |")
    return "\n".join(rows)


def hop_table(loads: dict[str, Any], probes: dict[str, Any]) -> str:
    """Each hop alone at c=1, next to the whole gateway path it is part of."""
    rows = ["| measured alone, c=1 | p50 | p99 |", "|---|---:|---:|"]
    named = {
        "client -> simulator, direct (baseline)": loads["chat@1/direct"]["latency_ms"],
        "client -> ingress GET /healthz (HTTP server + FastAPI)": loads["hop:ingress_healthz"]["latency_ms"],
        "client -> ingress chat, unknown model (+ auth, validation, audit; 404)": loads[
            "hop:ingress_unknown_model"
        ]["latency_ms"],
        "JetStream publish -> PubAck (nats-py)": probes["jetstream_publish_ack"],
        "JetStream publish -> delivery to a waiting pull request": probes["publish_to_pull_delivery"],
        "core NATS request -> reply (two one-way hops)": probes["core_request_reply"],
        "worker's backend call: aiohttp -> simulator": probes["backend_aiohttp"],
        "**whole gateway path, chat**": loads["chat@1/gateway"]["latency_ms"],
    }
    rows += [f"| {name} | {lat['p50']:.3f} | {lat['p99']:.3f} |" for name, lat in named.items()]
    return "\n".join(rows)


def budget_table(loads: dict[str, Any], probes: dict[str, Any]) -> str:
    """The c=1 gateway p50 as the sum of the hops on its critical path, and what is left over."""
    p50 = {
        "ingress HTTP in and out, auth, validation (unknown-model request)": loads[
            "hop:ingress_unknown_model"
        ]["latency_ms"]["p50"],
        "request to the worker: JetStream publish -> pull delivery": probes["publish_to_pull_delivery"][
            "p50"
        ],
        "worker -> backend -> worker (aiohttp, includes the simulator)": probes["backend_aiohttp"]["p50"],
        "final reply frame, worker -> ingress (half a core NATS round trip)": probes["core_request_reply"][
            "p50"
        ]
        / 2,
    }
    total = loads["chat@1/gateway"]["latency_ms"]["p50"]
    rows = ["| critical-path part (p50, c=1) | ms |", "|---|---:|"]
    rows += [f"| {name} | {value:.2f} |" for name, value in p50.items()]
    rows.append(f"| sum of the hops measured alone | {sum(p50.values()):.2f} |")
    rows.append(
        f"| **rest: gateway code between the hops, extra frames, contention** | **{total - sum(p50.values()):.2f}** |"
    )
    rows.append(f"| gateway chat p50, measured | {total:.2f} |")
    return "\n".join(rows)


def gc_table(gc: dict[str, Any]) -> str:
    rows = [
        "| gateway run | ingress: full GCs, longest, GC ms/request | worker: full GCs, longest, GC ms/request |",
        "|---|---|---|",
    ]
    for key, procs in gc.items():
        cells = [
            f"{p['gen2']}, {p['gen2_max_ms']:.1f} ms, {p['total_ms_per_request']:.3f}"
            for p in (procs["ingress"], procs["worker"])
        ]
        rows.append(f"| {key.removesuffix('/gateway')} | {cells[0]} | {cells[1]} |")
    return "\n".join(rows)


def wrk_table(wrk: dict[str, Any]) -> str:
    columns = (
        "run | c | direct p50 / p99 | gateway p50 / p99 | added p50 / p99 | direct req/s | gateway req/s"
    )
    rows = [f"| {columns} | other CPU, cores |", "|---|---:|---|---|---|---:|---:|---:|"]
    # In the order the runs were made: by scenario, then by concurrency.
    for key in dict.fromkeys(k.rsplit("/", 1)[0] for k in wrk):
        scenario, c = key.split("@")
        d, g = wrk[f"{key}/direct"], wrk[f"{key}/gateway"]
        rows.append(
            f"| {scenario} | {c} | {d['p50_ms']:.2f} / {d['p99_ms']:.2f} | {g['p50_ms']:.2f} / {g['p99_ms']:.2f} "
            f"| {g['p50_ms'] - d['p50_ms']:.2f} / {g['p99_ms'] - d['p99_ms']:.2f} | {d['rps']:,.0f} | {g['rps']:,.0f} "
            f"| {max(d['foreign_cores'], g['foreign_cores']):.2f} |"
        )
    return "\n".join(rows)


def targets(results: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(target, measured, met) for each target named in the issue that this run measured."""
    loads, relays = results["loads"], results.get("relays", {})
    out: list[tuple[str, str, bool]] = []
    if "chat@16/gateway" in loads:
        chat = added(loads, "chat", 16)
        out.append(("non-streaming chat, c=16: added p50 ≤ 2 ms", f"{chat['p50']:.2f} ms", chat["p50"] <= 2))
        out.append(
            ("non-streaming chat, c=16: added p99 ≤ 10 ms", f"{chat['p99']:.2f} ms", chat["p99"] <= 10)
        )
    ttft = {c: added(loads, "stream", c)["p50"] for c in (1, 16, 64) if f"stream@{c}/gateway" in loads}
    if ttft:
        measured = ", ".join(f"c={c}: {v:.2f} ms" for c, v in ttft.items())
        out.append(
            ("streaming adds ≤ 3 ms to time to first token (p50, c=16)", measured, ttft.get(16, 1e9) <= 3)
        )
    rates = [v["tokens_per_s_median"] for k, v in relays.items() if k.endswith("/gateway")]
    if rates:
        out.append(
            (
                "streaming relays ≥ 50,000 tokens/s",
                f"{min(rates):,.0f} tokens/s (slowest case)",
                min(rates) >= 50_000,
            )
        )
    return out


def targets_table(results: dict[str, Any]) -> str:
    rows = ["| target | measured | |", "|---|---|---|"]
    rows += [f"| {t} | {m} | {'met' if ok else '**missed**'} |" for t, m, ok in targets(results)]
    return "\n".join(rows)


def machine_table(machine: dict[str, str]) -> str:
    rows = ["| | |", "|---|---|"]
    rows += [f"| {name} | {value} |" for name, value in machine.items()]
    return "\n".join(rows)


def noise_line(results: dict[str, Any]) -> str:
    """How much CPU other processes took while the figures were taken, and what was measured again."""
    entries = {**results["loads"], **results.get("relays", {})}
    foreign = {key: entry["foreign_cores"] for key, entry in entries.items()}
    worst = max(foreign, key=foreign.__getitem__)
    line = (
        f"CPU taken by other processes during the runs kept: median {statistics.median(foreign.values()):.2f} "
        f"cores, at most {foreign[worst]:.2f} ({worst})."
    )
    again = results.get("measured_again") or {}
    if again:
        line += " Measured again after a disturbance: " + ", ".join(
            f"{g} ({n}×)" for g, n in sorted(again.items())
        )
    return line


def render(report: dict[str, Any]) -> str:
    results = report["results"]
    loads = results["loads"]
    concurrencies = report["concurrencies"]
    scenarios = report["scenarios"]
    parts = ["### Machine", "", machine_table(report["machine"]), "", noise_line(results), ""]
    parts += ["### Latency in ms and throughput", ""]
    for scenario in scenarios:
        parts += [latency_table(loads, scenario, concurrencies), ""]
    if results.get("relays"):
        parts += [
            "### Relayed tokens per second",
            "",
            relay_table(results["relays"], report["relay_streams"]),
            "",
        ]
    for c in concurrencies:
        parts += [f"### CPU time per request in µs, c={c}", "", cpu_table(loads, scenarios, c), ""]
    if results.get("probes"):
        parts += ["### Single hops in isolation, ms", "", hop_table(loads, results["probes"]), ""]
        parts += ["### The c=1 latency as a sum of hops", "", budget_table(loads, results["probes"]), ""]
    if results.get("gc"):
        parts += ["### Garbage collection in the gateway's processes", "", gc_table(results["gc"]), ""]
    if report.get("wrk"):
        parts += ["### Cross-check with wrk (C client), ms", "", wrk_table(report["wrk"]), ""]
    parts += ["### Against the targets", "", targets_table(results), ""]
    return "\n".join(parts)


# --- bench/deployed.py: Modelbus as deployed beside its peers -----------------------------------

# Measured beside a gateway but not part of it: the load generator, the backend, and Postgres's
# processes that every database of the cluster shares.
NOT_GATEWAY = ("client", "simulator", "postgres-shared")
PEERS = ("litellm", "portkey", "floor")
PEER_TITLES = {"litellm": "LiteLLM", "portkey": "Portkey", "floor": "floor", "modelbus": "Modelbus"}


def gateway_cpu_us(result: dict[str, Any]) -> float:
    """CPU time per request of every process that serves the gateway, in µs."""
    return float(sum(v for k, v in result["cpu_us_per_request"].items() if k not in NOT_GATEWAY))


@dataclass(frozen=True)
class Row:
    label: str
    unit: str
    higher_is_better: bool
    value: Callable[[dict[str, Any], str], float | None]


def _added_p50(results: dict[str, Any], target: str) -> float | None:
    chat = results["chat@1"]
    return chat[target]["latency_ms"]["p50"] - chat["direct"]["latency_ms"]["p50"] if target in chat else None


def _cell(
    cell: str, pick: Callable[[dict[str, Any]], float]
) -> Callable[[dict[str, Any], str], float | None]:
    return lambda results, target: pick(results[cell][target]) if target in results[cell] else None


ROWS = [
    Row("chat c=1, added p50", "ms", False, _added_p50),
    Row("chat c=16, CPU per request", "ms", False, _cell("chat@16", lambda r: gateway_cpu_us(r) / 1000)),
    Row("chat c=16, req/s", "", True, _cell("chat@16", lambda r: r["rps"])),
    Row("chat c=16, p50", "ms", False, _cell("chat@16", lambda r: r["latency_ms"]["p50"])),
    Row("chat c=16, p99", "ms", False, _cell("chat@16", lambda r: r["latency_ms"]["p99"])),
    Row(
        "stream c=16, CPU per stream (16 chunks)",
        "ms",
        False,
        _cell("stream@16", lambda r: gateway_cpu_us(r) / 1000),
    ),
    Row(
        "stream c=16, relayed tokens/s per stream",
        "",
        True,
        _cell("relay@16", lambda r: r["tokens_per_s_per_stream"]),
    ),
    Row("embeddings c=16, req/s", "", True, _cell("embeddings@16", lambda r: r["rps"])),
    Row("idle, no traffic: CPU", "cores", False, _cell("idle", lambda r: r["gateway_cores"])),
]


def _figure(value: float | None, unit: str) -> str:
    if value is None:
        return "–"
    if unit == "cores":
        return f"{value:.3f} cores"
    return f"{value:,.2f} {unit}" if unit else f"{value:,.0f}"


def advantage(row: Row, results: dict[str, Any], peer: str) -> float | None:
    """How many times better Modelbus does than `peer` on this row (> 1: Modelbus is better)."""
    ours, theirs = row.value(results, "modelbus"), row.value(results, peer)
    if ours is None or theirs is None or ours <= 0 or theirs <= 0:
        return None
    return ours / theirs if row.higher_is_better else theirs / ours


def ratio_table(results: dict[str, Any]) -> str:
    peers = [p for p in PEERS if p in results["chat@16"]]
    head = " | ".join(PEER_TITLES[p] for p in (*peers, "modelbus"))
    vs = " | ".join(f"vs {PEER_TITLES[p]}" for p in peers)
    rows = [f"| | {head} | {vs} |", "|---|" + "---:|" * (2 * len(peers) + 1)]
    for row in ROWS:
        figures = " | ".join(_figure(row.value(results, t), row.unit) for t in (*peers, "modelbus"))
        ratios = " | ".join(
            f"{a:.2f}×" if (a := advantage(row, results, p)) is not None else "–" for p in peers
        )
        rows.append(f"| {row.label} | {figures} | {ratios} |")
    return "\n".join(rows)


def process_table(results: dict[str, Any], cells: tuple[str, ...] = ("chat@16", "stream@16")) -> str:
    """Modelbus's CPU per request by process: where a deployment's cost goes."""
    groups = sorted({g for c in cells for g in results[c]["modelbus"]["cpu_us_per_request"]})
    rows = [
        f"| µs per request | {' | '.join(groups)} | gateway total |",
        "|---|" + "---:|" * (len(groups) + 1),
    ]
    for cell in cells:
        cpu = results[cell]["modelbus"]["cpu_us_per_request"]
        cells_text = " | ".join(f"{cpu.get(g, 0.0):,.0f}" for g in groups)
        rows.append(f"| {cell} | {cells_text} | {gateway_cpu_us(results[cell]['modelbus']):,.0f} |")
    return "\n".join(rows)


def all_runs_table(results: dict[str, Any]) -> str:
    rows = [
        "| cell | target | p50 / p99 ms | req/s | gateway CPU µs/req | errors | other CPU, cores |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for cell, by_target in results.items():
        if cell.startswith("relay") or cell == "idle":
            continue
        for target, r in by_target.items():
            rows.append(
                f"| {cell} | {target} | {r['latency_ms']['p50']:.2f} / {r['latency_ms']['p99']:.2f} "
                f"| {r['rps']:,.0f} | {gateway_cpu_us(r):,.0f} | {r['errors']} | {r['foreign_cores']:.2f} |"
            )
    return "\n".join(rows)


def acceptance(results: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """Issue 15's acceptance bounds that this run measured: (bound, measured, met)."""
    by_label = {row.label: row for row in ROWS}
    checks: list[tuple[str, str, float]] = [
        ("chat c=16, CPU per request", "litellm", 6.0),
        ("chat c=16, CPU per request", "portkey", 1 / 1.5),
        ("chat c=16, req/s", "litellm", 6.0),
        ("chat c=16, req/s", "portkey", 0.8),
        ("chat c=1, added p50", "litellm", 8.0),
        ("chat c=1, added p50", "floor", 1 / 4),
        ("stream c=16, CPU per stream (16 chunks)", "litellm", 15.0),
        ("stream c=16, CPU per stream (16 chunks)", "portkey", 1.0),
    ]
    out = []
    for label, peer, bound in checks:
        ratio = advantage(by_label[label], results, peer)
        if ratio is not None:
            out.append(
                (
                    f"{label}: Modelbus ≥ {bound:.2f}× better than {PEER_TITLES[peer]}",
                    f"{ratio:.2f}×",
                    ratio >= bound,
                )
            )
    chat = results["chat@16"]["modelbus"]["latency_ms"]
    out.append(
        ("chat c=16: p99 ≤ 2× p50", f"{chat['p99'] / chat['p50']:.2f}×", chat["p99"] <= 2 * chat["p50"])
    )
    return out


def render_deployed(output: dict[str, Any]) -> str:
    results = output["results"]
    checks = ["| bound (issue 15) | measured | |", "|---|---|---|"]
    checks += [f"| {b} | {m} | {'met' if ok else '**missed**'} |" for b, m, ok in acceptance(results)]
    parts = [
        "### Machine", "", machine_table(output["machine"]), "",
        f"Command: `{output['command']}` ({output['seconds_per_cell']:g} s per cell and target).", "",
        "### Modelbus beside its peers (×: how many times better Modelbus does; > 1 is better)", "",
        ratio_table(results), "",
        "### Modelbus's CPU by process", "", process_table(results), "",
        "### Against issue 15's bounds", "", "\n".join(checks), "",
        "### Every run", "", all_runs_table(results), "",
    ]  # fmt: skip
    return "\n".join(parts)
