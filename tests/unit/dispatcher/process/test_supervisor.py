"""A background task that dies is restarted with backoff and reported down meanwhile."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY

from dispatcher.process.supervisor import Supervisor


async def test_a_failing_task_is_restarted_and_reported_down_meanwhile(
    caplog: pytest.LogCaptureFixture,
) -> None:
    supervisor = Supervisor("unit")
    runs = 0
    release = asyncio.Event()

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs < 3:
            raise RuntimeError("watch lost")
        await release.wait()  # the third run stays up

    supervisor.supervise("flaky", flaky)
    await asyncio.sleep(0.1)
    assert supervisor.down == ["flaky"]  # failed once, waiting out its backoff
    assert (
        REGISTRY.get_sample_value("modelbus_background_task_up", {"component": "unit", "task": "flaky"}) == 0
    )
    for _ in range(60):
        if runs == 3 and not supervisor.down:
            break
        await asyncio.sleep(0.05)
    assert runs == 3 and supervisor.down == [] and supervisor.restarts["flaky"] == 2
    assert (
        REGISTRY.get_sample_value("modelbus_background_task_up", {"component": "unit", "task": "flaky"}) == 1
    )
    assert any("'flaky' stopped (RuntimeError: watch lost)" in r.getMessage() for r in caplog.records)
    await supervisor.aclose()


async def test_a_task_that_returns_is_restarted_unless_stopping() -> None:
    supervisor = Supervisor("unit2")
    runs = 0

    async def returns() -> None:
        nonlocal runs
        runs += 1
        if supervisor.stopping.is_set():
            return
        if runs > 1:
            await supervisor.stopping.wait()

    supervisor.supervise("returns", returns)
    for _ in range(40):
        if runs == 2:
            break
        await asyncio.sleep(0.05)
    assert runs == 2  # returning is not a way to stop: it came back
    await supervisor.aclose(grace_s=2)
    assert runs == 2 and supervisor.down == []


async def test_names_are_unique() -> None:
    supervisor = Supervisor("unit3")
    supervisor.supervise("x", asyncio.Event().wait)
    with pytest.raises(ValueError):
        supervisor.supervise("x", asyncio.Event().wait)
    await supervisor.aclose()
