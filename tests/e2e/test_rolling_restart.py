"""Rolling restart under load: every Modelbus process (each ingress, each worker, the dispatcher) is
stopped with SIGTERM and started again, one at a time, while clients that retry on the documented
retryable errors keep sending sync, streaming and async requests. They see no failure at all."""

from __future__ import annotations

import contextlib
import time
from collections import Counter

import httpx
import pytest

from schemas.config import ModelConfig, SimulatorBackend
from tests.support.load import LoadRun, report
from tests.support.servers import TEST_KEY, Cluster, sql, wait_until, with_consumers

pytestmark = pytest.mark.timeout(300)
MODEL = "rolling"
PAUSE_S = 3


def test_restarting_every_process_one_at_a_time_fails_no_request(database_url: str, cluster: Cluster) -> None:
    models = [ModelConfig(name=MODEL, backend=SimulatorBackend(ttft_ms=20, tokens_per_s=300))]
    config = cluster.write_config(with_consumers(models))
    with cluster.together():
        cluster.dispatcher(config, database_url)
        gateways = [cluster.ingress(config, MODELBUS_DATABASE_URL=database_url) for _ in range(3)]
        workers = ["w-a", "w-b"]
        for worker in workers:
            cluster.worker(MODEL, config, worker)

    load = LoadRun(gateways, MODEL, concurrency=6)
    steady = load.window("steady state")
    load.start()
    try:
        time.sleep(PAUSE_S)
        steady.end = time.monotonic()
        for gateway in gateways:
            port = int(gateway.rsplit(":", 1)[1].split("/", 1)[0])
            window = load.window(f"restart ingress :{port}")
            cluster.proc(f"ingress-{port}").stop()
            cluster.ingress(config, port=port, MODELBUS_DATABASE_URL=database_url)
            time.sleep(PAUSE_S)
            window.end = time.monotonic()
        for worker in workers:
            window = load.window(f"restart worker {worker}")
            cluster.proc(worker).stop()
            cluster.worker(MODEL, config, worker)
            time.sleep(PAUSE_S)
            window.end = time.monotonic()
        window = load.window("restart dispatcher")
        cluster.proc("dispatcher").stop()
        cluster.dispatcher(config, database_url)
        time.sleep(PAUSE_S)
        window.end = time.monotonic()
    finally:
        load.stop()

    tasks = [o.task_id for o in load.outcomes if o.task_id]
    pending = set(tasks)
    with httpx.Client(headers={"Authorization": f"Bearer {TEST_KEY}"}, timeout=10) as client:

        def all_completed() -> bool:
            for t in list(pending):
                if client.get(f"{gateways[0]}/tasks/{t}").json()["status"] == "completed":
                    pending.discard(t)
            return not pending

        with contextlib.suppress(AssertionError):  # bounded; what is left counts as lost
            wait_until(all_completed, 90, "")

    def audited() -> Counter[str]:
        rows = sql(database_url, "SELECT request_id, count(*) AS n FROM audit_log GROUP BY request_id")
        return Counter({str(row["request_id"]): int(row["n"]) for row in rows})

    with contextlib.suppress(AssertionError):
        wait_until(lambda: all(audited()[t] >= 1 for t in tasks), 60, "")
    time.sleep(1)
    counts = audited()
    lost = len(pending | {t for t in tasks if counts[t] == 0})
    duplicated = sum(n - 1 for n in counts.values() if n > 1)
    print("\n" + report(load, lost=lost, duplicated=duplicated))
    failed = [o for o in load.outcomes if o.result != "ok"]
    assert not failed, failed[:5]
    assert lost == 0 and duplicated == 0
    assert {o.kind for o in load.outcomes} == {"sync", "stream", "async"}
