"""The compose files validate against the Compose Specification schema (vendored by check-jsonschema,
offline; no Docker engine here) and agree with each other and with the code."""

from __future__ import annotations

import json
import re
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from dispatcher.bus.bus_settings import BusSettings
from dispatcher.config.config_file import load_config
from ingress.ingress_settings import IngressSettings
from workers.worker_settings import WorkerSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose"


def _schema() -> dict[str, Any]:
    text = files("check_jsonschema").joinpath("builtin_schemas/vendor/compose-spec.json").read_text()
    return dict(json.loads(text))


@pytest.mark.parametrize("name", ["docker-compose.yml", "docker-compose.single.yml"])
def test_compose_files_match_the_compose_spec(name: str) -> None:
    jsonschema.validate(yaml.safe_load((COMPOSE / name).read_text()), _schema())


def test_the_ha_deployment_is_wired_together() -> None:
    compose = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    services = compose["services"]
    # Three NATS nodes, each routing to all three.
    for i in (1, 2, 3):
        conf = (COMPOSE / f"nats/nats-{i}.conf").read_text()
        assert f"server_name: nats-{i}" in conf and "jetstream" in conf
        assert set(re.findall(r"nats-route://(nats-\d):6222", conf)) == {"nats-1", "nats-2", "nats-3"}
        assert f"./nats/nats-{i}.conf:/etc/nats/nats.conf:ro" in services[f"nats-{i}"]["volumes"]
    # The load balancer's backends are the three ingress services, health-checked on /readyz.
    haproxy = (COMPOSE / "haproxy/haproxy.cfg").read_text()
    backends = set(re.findall(r"server (ingress-\d) (ingress-\d):8080 check", haproxy))
    assert backends == {(f"ingress-{i}", f"ingress-{i}") for i in (1, 2, 3)}
    assert "option httpchk GET /readyz" in haproxy
    assert all(f"ingress-{i}" in services for i in (1, 2, 3))
    # Every scrape target is a service; the alert rules are loaded.
    prometheus = yaml.safe_load((COMPOSE / "prometheus/prometheus.yml").read_text())
    for job in prometheus["scrape_configs"]:
        for target in job["static_configs"][0]["targets"]:
            assert target.split(":")[0] in services, target
    assert prometheus["rule_files"] == ["/etc/prometheus/alerts.yml"]
    # Streams at R3 on the cluster; each worker's model is in the config; NATS users for each.
    config = load_config(COMPOSE / "config.yaml")
    models = {m.name for m in config.models}
    auth = " ".join(services["nats-auth"]["command"])
    for name, service in services.items():
        env = service.get("environment", {})
        if name.startswith("worker-"):
            assert env["MODEL"] in models
            assert f"--worker {env['MODELBUS_WORKER_ID']}={env['MODEL']}" in auth
        if name.startswith("ingress-"):
            assert f"--ingress {env['MODELBUS_INGRESS_ID']}" in auth
        if env.get("MODELBUS_NATS_URL"):
            assert env["MODELBUS_STREAM_REPLICAS"] == "3"
            assert len(env["MODELBUS_NATS_URL"].split(",")) == 3


def test_environment_variables_exist_in_the_settings() -> None:
    known = {
        f"MODELBUS_{name.upper()}"
        for cls in (BusSettings, IngressSettings, WorkerSettings)
        for name in cls.model_fields
    }
    for name in ("docker-compose.yml", "docker-compose.single.yml"):
        compose = yaml.safe_load((COMPOSE / name).read_text())
        for service in compose["services"].values():
            for key in service.get("environment", {}):
                if key.startswith("MODELBUS_"):
                    assert key in known, (name, key)
