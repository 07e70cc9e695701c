"""What the fuzz run (tests/e2e/test_fuzz.py) counted, kept where the terminal summary finds it
without importing the fuzzer."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pytest

FUZZ_REPORT = pytest.StashKey["FuzzReport"]()


@dataclass
class FuzzReport:
    operations: int = 0
    requests: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)
    hangs: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    healthz_probes: int = 0
    healthz_failures: list[str] = field(default_factory=list)
    healthz_max_ms: float = 0.0
    seconds: float = 0.0

    def summary(self) -> str:
        return (
            f"fuzz (schemathesis): {self.requests} generated requests over {self.operations} operations "
            f"in {self.seconds:.1f} s: {len(self.server_errors)} server errors (>= 500), "
            f"{len(self.hangs)} hangs, {len(self.violations)} schema violations; /healthz answered "
            f"{self.healthz_probes} probes, {len(self.healthz_failures)} failed, slowest {self.healthz_max_ms:.0f} ms"
        )
