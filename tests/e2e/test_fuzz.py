"""Schemathesis over the ingress's own OpenAPI document, against a real stack (NATS, Postgres, the
dispatcher, an ingress and a simulator worker), authenticated with a real admin key.

Every operation gets EXAMPLES positive and EXAMPLES negative cases (derandomized, so CI runs the same
requests each time; MODELBUS_FUZZ_SEED=<n> explores others). The bars: no response >= 500, no request
without an answer within REQUEST_TIMEOUT_S, every response as the document says (status, content type,
body schema), and `/healthz` answering throughout (a prober polls it from another thread). The counts
reach the terminal summary even under `pytest -q` (tests/conftest.py, `pytest_terminal_summary`).
"""

from __future__ import annotations

import os
from collections import Counter
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.errors import FailureGroup
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from modelbus.embedded_nats import NatsServer
from schemas.config import ModelConfig, SimulatorBackend
from tests.servers import ADMIN_KEY, Cluster, with_consumers

EXAMPLES = 30  # per operation and mode: ~34 operations x 2 modes x 12 = ~800 requests
REQUEST_TIMEOUT_S = 10.0
HEALTHZ_EVERY_S = 0.25
HEALTHZ_TIMEOUT_S = 2.0
BUDGET_S = 90.0  # the whole run, generation included, on the 2-core CI machine
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
FUZZ_REPORT = pytest.StashKey["FuzzReport"]()


@dataclass
class FuzzReport:
    operations: int = 0
    requests: int = 0
    server_errors: list[str] = field(default_factory=list)
    hangs: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    unsatisfiable: list[str] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    healthz_probes: int = 0
    healthz_failures: list[str] = field(default_factory=list)
    healthz_max_ms: float = 0.0
    seconds: float = 0.0

    def summary(self) -> str:
        return (
            f"fuzz (schemathesis): {self.requests} generated requests over {self.operations} operations "
            f"in {self.seconds:.1f} s; {len(self.server_errors)} server errors (>= 500), "
            f"{len(self.hangs)} hangs, {len(self.violations)} schema violations; /healthz "
            f"{self.healthz_probes} probes, {len(self.healthz_failures)} failed, max {self.healthz_max_ms:.0f} ms"
        )


@pytest.fixture(scope="module")
def stack(
    nats_server: NatsServer, module_database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    cluster = Cluster(Path(tmp_path_factory.mktemp("fuzz")), nats_server.url, "fz" + uuid.uuid4().hex[:10])
    try:
        backend = SimulatorBackend(ttft_ms=1, tokens_per_s=100_000, default_max_tokens=4)
        path = cluster.write_config(with_consumers([ModelConfig(name="m", backend=backend)]))
        cluster.dispatcher(path, module_database_url)
        base = cluster.ingress(path, MODELBUS_DATABASE_URL=module_database_url)
        cluster.worker("m", path, "fuzz-w1")
        yield base.removesuffix("/v1")
    finally:
        cluster.close()


class _Prober(threading.Thread):
    """GET /healthz every HEALTHZ_EVERY_S until stopped; a failure or a slow answer is recorded."""

    def __init__(self, url: str, report: FuzzReport) -> None:
        super().__init__(daemon=True)
        self._url, self._report, self._halt = url, report, threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=HEALTHZ_TIMEOUT_S) as client:
            while not self._halt.wait(HEALTHZ_EVERY_S):
                start = time.perf_counter()
                try:
                    status = client.get(self._url).status_code
                except httpx.HTTPError as exc:
                    self._report.healthz_failures.append(
                        f"{type(exc).__name__} after {time.perf_counter() - start:.1f} s"
                    )
                    continue
                took_ms = (time.perf_counter() - start) * 1000
                self._report.healthz_probes += 1
                self._report.healthz_max_ms = max(self._report.healthz_max_ms, took_ms)
                if status != 200:
                    self._report.healthz_failures.append(f"status {status}")

    def stop(self) -> None:
        self._halt.set()
        self.join()


def _aim_at_a_served_model(case: schemathesis.Case) -> None:
    """Half the bodies that name a model name the configured one, so requests reach the worker."""
    body = case.body
    if isinstance(body, dict) and "model" in body and hash(repr(body)) % 2 == 0:
        body["model"] = "m"


def _modes(operation: schemathesis.APIOperation) -> list[GenerationMode]:
    """Negative cases need something to make invalid: a parameter or a body."""
    # A path parameter that is any string cannot be made invalid; a body or a query parameter can.
    takes_input = operation.get_request_payload_content_types() or any(
        parameter.location != "path" for parameter in operation.iter_parameters()
    )
    return [GenerationMode.POSITIVE, GenerationMode.NEGATIVE] if takes_input else [GenerationMode.POSITIVE]


def _label(case: schemathesis.Case, detail: str) -> str:
    return f"{case.method} {case.formatted_path} -> {detail}\n  {case.as_curl_command()[:600]}"


def test_fuzz_every_route(stack: str, request: pytest.FixtureRequest) -> None:
    auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
    document = httpx.get(f"{stack}/openapi.json", headers=auth, timeout=10).json()
    schema = schemathesis.openapi.from_dict(document)
    operations = [result.ok() for result in schema.get_all_operations()]
    report = FuzzReport(operations=len(operations))
    request.config.stash[FUZZ_REPORT] = report
    fuzz_seed = os.environ.get("MODELBUS_FUZZ_SEED")
    session = requests.Session()
    prober = _Prober(f"{stack}/healthz", report)
    started = time.perf_counter()
    prober.start()
    try:
        for operation in operations:
            for mode in _modes(operation):

                @settings(
                    max_examples=EXAMPLES,
                    deadline=None,
                    database=None,
                    derandomize=fuzz_seed is None,
                    phases=[Phase.explicit, Phase.generate],  # no shrinking: every finding is kept as sent
                    suppress_health_check=list(HealthCheck),
                )
                @given(case=operation.as_strategy(generation_mode=mode))
                def run(case: schemathesis.Case) -> None:
                    if mode is GenerationMode.POSITIVE:  # a negative case's bad model stays bad
                        _aim_at_a_served_model(case)
                    try:
                        response = case.call(
                            base_url=stack, session=session, headers=auth, timeout=REQUEST_TIMEOUT_S
                        )
                    except requests.Timeout:
                        report.hangs.append(_label(case, f"no answer in {REQUEST_TIMEOUT_S} s"))
                        return
                    report.requests += 1
                    report.statuses[f"{operation.label} {response.status_code}"] += 1
                    if response.status_code >= 500:
                        report.server_errors.append(
                            _label(case, f"{response.status_code} {response.text[:300]}")
                        )
                        return
                    try:
                        case.validate_response(response, checks=CHECKS)
                    except (AssertionError, FailureGroup) as exc:
                        report.violations.append(_label(case, str(exc)[:800]))

                if fuzz_seed is not None:
                    run = seed(int(fuzz_seed))(run)
                try:
                    run()
                except Unsatisfiable:
                    report.unsatisfiable.append(f"{operation.label} ({mode.value})")
    finally:
        prober.stop()
        report.seconds = time.perf_counter() - started
    print(report.summary())
    print("unsatisfiable:", report.unsatisfiable)
    print(sorted(report.statuses.items()))
    assert report.requests >= len(operations), report.summary()
    for kind in ("server_errors", "hangs", "violations"):
        print(kind, len(getattr(report, kind)))
        for item in getattr(report, kind)[:15]:
            print("  ", item[:1500])
    assert not report.server_errors, "\n".join(report.server_errors[:10])
    assert not report.hangs, "\n".join(report.hangs[:10])
    assert not report.violations, "\n".join(report.violations[:10])
    assert not report.healthz_failures and report.healthz_probes > 0, report.healthz_failures[:10]
    assert report.seconds <= BUDGET_S, report.summary()
