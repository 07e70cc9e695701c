"""`modelbus top` in a pseudo-terminal: the queue of a model without workers rises, then falls to
zero once a worker starts."""

from __future__ import annotations

import re
import sys
import threading
import time

import httpx
import pexpect

from schemas.config import ModelConfig, SimulatorBackend
from tests.support.servers import TEST_KEY, Cluster, with_consumers

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class _Screen:
    """Everything `top` drew, read continuously from the pty so it never blocks on a full buffer."""

    def __init__(self, child: pexpect.spawn) -> None:
        self.text = ""
        self._child = child
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                self.text += _ANSI.sub("", self._child.read_nonblocking(65536, timeout=1))
            except pexpect.TIMEOUT:
                continue
            except pexpect.EOF:
                return

    def queued(self, model: str) -> list[int]:
        """The queued column of every frame drawn so far, in order."""
        return [
            int(m.group(1)) for m in re.finditer(rf"│\s*{model}\s*│\s*default\s*│\s*(\d+)\s*│", self.text)
        ]


def _wait(check: object, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(message)


def test_top_shows_lag_rising_without_workers_and_falling_with_one(cluster: Cluster) -> None:
    path = cluster.write_config(
        with_consumers([ModelConfig(name="slow", backend=SimulatorBackend(ttft_ms=1))])
    )
    base = cluster.ingress(path)
    env = cluster.env(path, COLUMNS="160", LINES="40", TERM="xterm-256color")
    child = pexpect.spawn(
        sys.executable,
        ["-m", "modelbus.cli", "top", "--interval", "0.5"],
        env=env,
        dimensions=(40, 160),
        encoding="utf-8",
    )
    screen = _Screen(child)
    try:
        _wait(lambda: screen.queued("slow"), 30, f"top drew no frame:\n{screen.text[-2000:]}")
        assert screen.queued("slow")[-1] == 0
        # No worker: async requests wait in the stream, and top shows the queue growing.
        with httpx.Client(
            base_url=base, headers={"Authorization": f"Bearer {TEST_KEY}", "Prefer": "respond-async"}
        ) as http:
            for i in range(12):
                body = {"model": "slow", "max_tokens": 2, "messages": [{"role": "user", "content": f"q{i}"}]}
                assert http.post("/chat/completions", json=body).status_code == 202
                time.sleep(0.1)
        _wait(lambda: screen.queued("slow")[-1] == 12, 15, f"queue never reached 12: {screen.queued('slow')}")
        rising = screen.queued("slow")
        assert any(0 < q < 12 for q in rising) or rising.count(12) >= 1
        assert "↑" in screen.text  # the trend column says it grew
        # A worker starts: the queue drains, and top shows it falling to zero.
        cluster.worker("slow", path, "w1")
        _wait(
            lambda: screen.queued("slow")[-1] == 0, 30, f"queue never drained: {screen.queued('slow')[-10:]}"
        )
        frames = screen.queued("slow")
        peak = frames.index(12)
        assert frames[-1] == 0 and max(frames[peak:]) == 12
        assert "↓" in screen.text
    finally:
        child.terminate(force=True)
