"""The Grafana dashboard and the Prometheus alert rules parse, and every metric they use is one
Modelbus exports (a renamed metric must not silently blank a panel or disarm an alert)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client.core import REGISTRY

from dispatcher.telemetry import metrics

ROOT = Path(__file__).resolve().parents[2]
ALERTS = {"ModelbusQueueLagGrowing", "ModelbusModelNoWorkers", "ModelbusHighErrorRate", "ModelbusAuditSinkBehind",
          "ModelbusConfigReloadFailed"}  # fmt: skip
_NAME = re.compile(r"\b((?:modelbus|gen_ai)_[a-z0-9_]+)")
# Label names that share the prefixes (OpenTelemetry GenAI attribute names), not metrics.
_LABELS = {"gen_ai_request_model", "gen_ai_operation_name", "gen_ai_token_type"}


def _exported() -> set[str]:
    names = set(metrics.CALLBACK_FAMILIES)
    for family in REGISTRY.collect():
        for sample in family.samples:
            names.add(sample.name)
        names.add(family.name)
    # Histograms and counters are queried by their series names.
    for family in list(names):
        names |= {family + suffix for suffix in ("_total", "_bucket", "_count", "_sum")}
    return names


def test_alert_rules_cover_the_runbook_and_use_exported_metrics() -> None:
    rules = yaml.safe_load((ROOT / "compose/prometheus/alerts.yml").read_text())
    found = {rule["alert"]: rule for group in rules["groups"] for rule in group["rules"]}
    assert set(found) == ALERTS
    exported = _exported()
    for name, rule in found.items():
        used = set(_NAME.findall(rule["expr"])) - _LABELS
        assert used and used <= exported, (name, used - exported)
        assert rule["labels"]["severity"] in ("warning", "critical")


def test_dashboard_panels_use_exported_metrics() -> None:
    dashboard = json.loads((ROOT / "compose/grafana/dashboards/modelbus.json").read_text())
    exported = _exported()
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 15
    for expr in exprs:
        used = set(_NAME.findall(expr)) - _LABELS
        assert used and used <= exported, (expr, used - exported)
