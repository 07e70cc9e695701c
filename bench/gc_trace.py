"""Run one `modelbus` command with every garbage collection timed, for `gateway_overhead.py --gc-trace`.

    python -m bench.gc_trace OUT.json -- ingress --port 8080

The command runs unchanged; a `gc.callbacks` hook records (wall time, generation, pause, objects
collected) of each collection and writes them to OUT.json on SIGUSR1 (uvicorn ends its process by
re-raising SIGTERM, so there is no exit hook to rely on). SIGUSR2 makes the process run
`gc.collect(); gc.freeze()` once, which is how the benchmark tries out the fix it suggests (moving
everything that exists after start-up out of the collector's sight) without touching the gateway.
`gc_by_run` reads the traces back, run by run.
"""

from __future__ import annotations

import gc
import json
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any


class GcRecorder:
    def __init__(self, out: Path) -> None:
        self._out = out
        self._started: dict[int, float] = {}
        self.collections: list[tuple[float, int, float, int]] = []
        self.frozen = 0

    def on_gc(self, phase: str, info: dict[str, Any]) -> None:
        generation = int(info["generation"])
        if phase == "start":
            self._started[generation] = time.perf_counter()
            return
        pause = time.perf_counter() - self._started.pop(generation, time.perf_counter())
        self.collections.append((time.time(), generation, pause, int(info["collected"])))

    def freeze(self, signum: int, frame: FrameType | None) -> None:
        gc.collect()
        gc.freeze()
        self.frozen = gc.get_freeze_count()
        print(f"gc_trace: froze {self.frozen} objects", file=sys.stderr, flush=True)

    def dump(self, signum: int | None = None, frame: FrameType | None = None) -> None:
        # Written aside and renamed, so a reader never sees half a file.
        partial = self._out.with_suffix(".partial")
        partial.write_text(json.dumps({"frozen": self.frozen, "collections": self.collections}))
        partial.replace(self._out)


def gc_by_run(trace_dir: Path, loads: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """Collections of each traced process that started inside each gateway run's time window."""
    traces = {name: json.loads((trace_dir / f"gc-{name}.json").read_text()) for name in names}
    by_run: dict[str, Any] = {}
    for key, load in loads.items():
        if not key.endswith("/gateway"):
            continue
        start, end = load["window"]
        by_run[key] = {}
        for name, trace in traces.items():
            pauses = [(gen, pause) for at, gen, pause, _ in trace["collections"] if start <= at <= end]
            full = [pause for gen, pause in pauses if gen == 2]
            by_run[key][name] = {
                "collections": len(pauses),
                "gen2": len(full),
                "gen2_max_ms": max(full, default=0.0) * 1000,
                "total_ms_per_request": sum(p for _, p in pauses) * 1000 / load["requests"],
                "frozen": trace["frozen"],
            }
    return by_run


def main() -> None:
    out, separator, *command = sys.argv[1:]
    if separator != "--" or not command:
        sys.exit("usage: python -m bench.gc_trace OUT.json -- <modelbus arguments>")
    recorder = GcRecorder(Path(out))
    gc.callbacks.append(recorder.on_gc)
    signal.signal(signal.SIGUSR1, recorder.dump)
    signal.signal(signal.SIGUSR2, recorder.freeze)
    sys.argv = ["modelbus", *command]
    from modelbus.cli import app

    app()


if __name__ == "__main__":
    main()
