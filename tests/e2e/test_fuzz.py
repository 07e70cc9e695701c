"""Schemathesis over the ingress's own OpenAPI document, against a real stack (NATS, Postgres, the
dispatcher, an ingress and a simulator worker), authenticated with a real admin key.

Every operation gets up to EXAMPLES positive cases and, where it takes a body or a query, up to
EXAMPLES negative ones (derandomized, so CI sends the same requests each run; MODELBUS_FUZZ_SEED=<n>
explores others). The bars: no response >= 500, every request answered within REQUEST_TIMEOUT_S,
every response as the document says (status, content type, body schema), invalid input refused, and
`/healthz` answering throughout (a prober polls it from another thread). The counts reach the
terminal summary even under `pytest -q` (tests/conftest.py, `pytest_terminal_summary`).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.errors import FailureGroup

from modelbus.embedded_nats import NatsServer
from schemas.config import ModelConfig, SimulatorBackend
from tests.support.fuzz_report import FUZZ_REPORT, FuzzReport
from tests.support.servers import ADMIN_KEY, Cluster, with_consumers

EXAMPLES = 30  # per operation and mode; hypothesis stops early where an operation has fewer inputs
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


@pytest.fixture(scope="module")
def stack(
    nats_server: NatsServer, module_database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    cluster = Cluster(Path(tmp_path_factory.mktemp("fuzz")), nats_server.url, "fz" + uuid.uuid4().hex[:10])
    try:
        backend = SimulatorBackend(ttft_ms=1, tokens_per_s=100_000, default_max_tokens=4)
        path = cluster.write_config(with_consumers([ModelConfig(name="m", backend=backend)]))
        with cluster.together():
            cluster.dispatcher(path, module_database_url)
            base = cluster.ingress(path, MODELBUS_DATABASE_URL=module_database_url)
            cluster.worker("m", path, "fuzz-w1")
        yield base.removesuffix("/v1")
    finally:
        cluster.close()


class _Prober(threading.Thread):
    """GET /healthz every HEALTHZ_EVERY_S until stopped; a failure or an error status is recorded."""

    def __init__(self, url: str, report: FuzzReport) -> None:
        super().__init__(daemon=True)
        self._url, self._report, self._halt = url, report, threading.Event()

    def run(self) -> None:
        report = self._report
        with httpx.Client(timeout=HEALTHZ_TIMEOUT_S) as client:
            while not self._halt.wait(HEALTHZ_EVERY_S):
                start = time.perf_counter()
                try:
                    status = client.get(self._url).status_code
                except httpx.HTTPError as exc:
                    report.healthz_failures.append(
                        f"{type(exc).__name__} after {time.perf_counter() - start:.1f} s"
                    )
                    continue
                report.healthz_probes += 1
                report.healthz_max_ms = max(report.healthz_max_ms, (time.perf_counter() - start) * 1000)
                if status != 200:
                    report.healthz_failures.append(f"status {status}")

    def stop(self) -> None:
        self._halt.set()
        self.join()


@dataclass
class _Fuzzer:
    base: str
    report: FuzzReport
    session: requests.Session = field(default_factory=requests.Session)
    headers: dict[str, str] = field(default_factory=lambda: {"Authorization": f"Bearer {ADMIN_KEY}"})

    def run(self, operation: schemathesis.APIOperation, mode: GenerationMode) -> None:
        fuzz_seed = os.environ.get("MODELBUS_FUZZ_SEED")

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=fuzz_seed is None,
            phases=[Phase.explicit, Phase.generate],  # no shrinking: every finding is kept as sent
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def send(case: schemathesis.Case) -> None:
            self.send(case, mode)

        if fuzz_seed is not None:
            send = seed(int(fuzz_seed))(send)
        send()

    def send(self, case: schemathesis.Case, mode: GenerationMode) -> None:
        if mode is GenerationMode.POSITIVE:  # a negative case's bad model stays bad
            _aim_at_the_served_model(case)
        report = self.report
        try:
            response = case.call(
                base_url=self.base, session=self.session, headers=self.headers, timeout=REQUEST_TIMEOUT_S
            )
        except requests.Timeout:
            report.hangs.append(_label(case, f"no answer in {REQUEST_TIMEOUT_S} s"))
            return
        report.requests += 1
        report.statuses[f"{case.operation.label} {response.status_code}"] += 1
        if response.status_code >= 500:
            report.server_errors.append(_label(case, f"{response.status_code} {response.text[:300]}"))
            return
        try:
            case.validate_response(response, checks=CHECKS)
        except (AssertionError, FailureGroup) as exc:
            report.violations.append(_label(case, str(exc)[:1500]))


def _modes(operation: schemathesis.APIOperation) -> list[GenerationMode]:
    """Negative cases need something to make invalid: a body or a query (any string is a valid path
    parameter here)."""
    takes_input = bool(operation.get_request_payload_content_types()) or any(
        parameter.location != "path" for parameter in operation.iter_parameters()
    )
    return [GenerationMode.POSITIVE, GenerationMode.NEGATIVE] if takes_input else [GenerationMode.POSITIVE]


def _aim_at_the_served_model(case: schemathesis.Case) -> None:
    """Half the bodies that name a model name the configured one, so requests reach the worker."""
    body = case.body
    if isinstance(body, dict) and "model" in body and zlib.crc32(repr(body).encode()) % 2 == 0:
        body["model"] = "m"


def _label(case: schemathesis.Case, detail: str) -> str:
    return f"{case.method} {case.formatted_path} -> {detail}\n  {case.as_curl_command()[:600]}"


@pytest.mark.timeout(180)  # the run's own bound is BUDGET_S; this leaves room for the stack's start
def test_fuzz_every_route(stack: str, request: pytest.FixtureRequest) -> None:
    fuzzer = _Fuzzer(stack, FuzzReport())
    document = httpx.get(f"{stack}/openapi.json", headers=fuzzer.headers, timeout=10).json()
    operations = [result.ok() for result in schemathesis.openapi.from_dict(document).get_all_operations()]
    report = fuzzer.report
    report.operations = len(operations)
    request.config.stash[FUZZ_REPORT] = report  # the terminal summary prints it, pass or fail
    prober = _Prober(f"{stack}/healthz", report)
    started = time.perf_counter()
    prober.start()
    try:
        for operation in operations:
            for mode in _modes(operation):
                fuzzer.run(operation, mode)
    finally:
        prober.stop()
        report.seconds = time.perf_counter() - started
    print(report.summary())
    print("responses by operation and status:", sorted(report.statuses.items()))
    assert report.operations >= 34 and report.requests >= 10 * report.operations, report.summary()
    assert not report.server_errors, "\n".join(report.server_errors[:10])
    assert not report.hangs, "\n".join(report.hangs[:10])
    assert not report.violations, "\n".join(report.violations[:10])
    assert report.healthz_probes > 0 and not report.healthz_failures, report.healthz_failures[:10]
    assert report.seconds <= BUDGET_S, report.summary()
