"""How operator commands in another shell find a running `modelbus up`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from modelbus import up_record


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    return tmp_path / "modelbus" / "up.json"


def test_a_live_stack_supplies_its_addresses_but_never_over_the_callers(state: Path) -> None:
    up_record.publish("http://127.0.0.1:9/v1", "nats://127.0.0.1:4999", "postgresql://db", "verify-key")
    assert state.stat().st_mode & 0o777 == 0o600
    environ: dict[str, str] = {"MODELBUS_DATABASE_URL": "postgresql://mine"}
    assert up_record.adopt(environ) == "http://127.0.0.1:9/v1"
    assert environ == {
        "MODELBUS_NATS_URL": "nats://127.0.0.1:4999",
        "MODELBUS_DATABASE_URL": "postgresql://mine",
        "MODELBUS_AUDIT_VERIFY_KEY": "verify-key",
    }
    # A caller who names a broker means another deployment: nothing of the record applies.
    chosen = {"MODELBUS_NATS_URL": "nats://elsewhere:4222"}
    assert up_record.adopt(chosen) is None
    assert chosen == {"MODELBUS_NATS_URL": "nats://elsewhere:4222"}
    up_record.withdraw()
    assert not state.exists()


def test_a_killed_stack_is_ignored_and_another_stacks_record_is_not_removed(state: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], check=True, capture_output=True, text=True
    )
    state.parent.mkdir(parents=True)
    state.write_text(json.dumps({"pid": int(dead.stdout), "nats_url": "nats://127.0.0.1:1"}))
    environ: dict[str, str] = {}
    assert up_record.adopt(environ) is None and environ == {}
    state.write_text(json.dumps({"pid": os.getppid(), "nats_url": "nats://127.0.0.1:1"}))
    up_record.withdraw()  # not ours
    assert state.exists()
    state.write_text("{not json")
    assert up_record.running() is None
