"""CPU time of processes, from /proc: what each watched process used during a run, and everything else."""

from __future__ import annotations

import os
import time


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (clock-tick resolution)."""
    with open(f"/proc/{pid}/stat", "rb") as stat:
        # The command name may hold spaces; the numeric fields start after its closing parenthesis.
        fields = stat.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_snapshot(watch: dict[str, list[int]]) -> dict[str, dict[int, float]]:
    """CPU time so far of every watched process, by group; a process that has exited is left out."""
    snapshot: dict[str, dict[int, float]] = {}
    for name, pids in watch.items():
        snapshot[name] = {}
        for pid in pids:
            try:
                snapshot[name][pid] = cpu_seconds(pid)
            except OSError:
                pass  # exited (a Postgres backend whose connection the pool closed)
    return snapshot


def machine_busy_seconds() -> float:
    """CPU time all processes together have used so far: user, nice, system, irq and softirq."""
    with open("/proc/stat", "rb") as stat:
        fields = stat.readline().split()  # cpu user nice system idle iowait irq softirq ...
    return sum(int(fields[i]) for i in (1, 2, 3, 6, 7)) / os.sysconf("SC_CLK_TCK")


class CpuUsage:
    """CPU time used between construction and `stop()`: by this client, by each watched process,
    and by everything else on the machine (`foreign`: other jobs, which make the figures noisy)."""

    def __init__(self, watch: dict[str, list[int]]) -> None:
        self._watch = watch
        self._before = cpu_snapshot(watch)
        self._client_before = time.process_time()
        self._machine_before = machine_busy_seconds()
        self.by_process: dict[str, float] = {}
        self.foreign = 0.0

    def stop(self) -> None:
        after = cpu_snapshot(self._watch)
        self.by_process = {"client": time.process_time() - self._client_before}
        for name, pids in after.items():
            # A process that exited during the run is not counted: its last figures are gone.
            before = self._before[name]
            self.by_process[name] = sum(used - before[pid] for pid, used in pids.items() if pid in before)
        machine = machine_busy_seconds() - self._machine_before
        self.foreign = max(0.0, machine - sum(self.by_process.values()))
