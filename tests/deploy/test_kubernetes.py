"""The Kubernetes manifests validate against Kubernetes' own schemas (kubernetes-validate, offline),
KEDA ScaledObjects against their schema, and agree with the code: KEDA watches exactly the consumers
Modelbus creates for each model, every workload is probed, every PDB selects a workload."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from dispatcher.bus.bus_settings import BusSettings
from dispatcher.bus.subjects import Subjects
from dispatcher.config.config_file import parse_config
from ingress.ingress_settings import IngressSettings
from schemas.envelope import Lane
from workers.worker_settings import WorkerSettings

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = sorted((ROOT / "deploy/k8s").glob("*.yaml"))
KUBERNETES = "1.30.0"


def _docs() -> list[dict[str, Any]]:
    return [doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]


def _of(kind: str) -> list[dict[str, Any]]:
    return [d for d in _docs() if d["kind"] == kind]


@pytest.mark.parametrize(
    "doc",
    [d for d in _docs() if d["kind"] != "ScaledObject"],
    ids=lambda d: f"{d['kind']}/{d['metadata']['name']}",
)
def test_builtin_kinds_validate_strictly(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_scaled_objects_validate_and_watch_the_right_consumers() -> None:
    schema = json.loads((ROOT / "tests/deploy/schemas/keda-scaledobject.json").read_text())
    subjects = Subjects("mb")
    deployments = {d["metadata"]["name"]: d for d in _of("Deployment")}
    scaled = _of("ScaledObject")
    assert scaled
    for obj in scaled:
        jsonschema.validate(obj, schema)
        target = deployments[obj["spec"]["scaleTargetRef"]["name"]]
        command = " ".join(target["spec"]["template"]["spec"]["containers"][0]["command"])
        model = re.search(r"--model (\S+)", command).group(1)  # type: ignore[union-attr]
        watched = {t["metadata"]["consumer"] for t in obj["spec"]["triggers"]}
        assert watched == {subjects.consumer(model, "default", lane) for lane in Lane}
        assert {t["metadata"]["stream"] for t in obj["spec"]["triggers"]} == {subjects.request_stream}
        assert obj["spec"]["minReplicaCount"] == 0  # scale to zero when nothing is queued


def test_every_workload_is_probed_and_protected() -> None:
    workloads = _of("Deployment") + _of("StatefulSet")
    for workload in workloads:
        for container in workload["spec"]["template"]["spec"]["containers"]:
            assert "readinessProbe" in container and "livenessProbe" in container, workload["metadata"][
                "name"
            ]
    labels = [w["spec"]["template"]["metadata"]["labels"] for w in workloads]
    for pdb in _of("PodDisruptionBudget"):
        selector = pdb["spec"]["selector"]["matchLabels"]
        assert any(selector.items() <= lab.items() for lab in labels), pdb["metadata"]["name"]
    protected = {
        tuple(sorted(p["spec"]["selector"]["matchLabels"].items())) for p in _of("PodDisruptionBudget")
    }
    for workload in workloads:
        assert tuple(sorted(workload["spec"]["selector"]["matchLabels"].items())) in protected


def test_config_and_settings_agree_with_the_code() -> None:
    [config_map] = [c for c in _of("ConfigMap") if c["metadata"]["name"] == "modelbus-config"]
    config = parse_config(config_map["data"]["config.yaml"])
    served = {m.name for m in config.models}
    for deployment in _of("Deployment"):
        command = " ".join(deployment["spec"]["template"]["spec"]["containers"][0]["command"])
        found = re.search(r"--model (\S+)", command)
        if found:
            assert found.group(1) in served
    [env] = [c for c in _of("ConfigMap") if c["metadata"]["name"] == "modelbus-env"]
    known = {
        f"MODELBUS_{name.upper()}"
        for cls in (BusSettings, IngressSettings, WorkerSettings)
        for name in cls.model_fields
    }
    assert set(env["data"]) <= known, set(env["data"]) - known
