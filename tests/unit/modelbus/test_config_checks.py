"""Configuration that is tested before it is applied: `config test`, and `config apply` refusing a
failing assertion or an unconfirmed weakening while the running revision stays; every apply audited
with its diff. Real NATS; the CLI as an operator runs it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import nats
import yaml
from click.testing import Result
from typer.testing import CliRunner

from dispatcher.config.config_file import dump_config
from modelbus.cli import app
from schemas.config import ConsumerConfig, ModelbusConfig, ModelConfig, RouteMatch, RouteRule
from schemas.policy import GuardrailsConfig, Limits, RoleConfig
from tests.support.servers import Cluster

TESTS = {
    "assertions": [
        {
            "consumer": "team-a",
            "model": "assistant",
            "prompt": "Wie spät ist es in Berlin?",
            "reaches": "assistant-de",
        },
        {"consumer": "team-a", "model": "assistant", "prompt": "What time is it?", "reaches": "assistant"},
        {"consumer": "team-a", "model": "finance", "refused": True},
        {"consumer": "team-a", "model": "assistant", "masks_pii": True},
        {"consumer": "team-a", "max_requests_per_min": 100},
    ]
}


def _config(route_to: str = "assistant-de", pii: str = "mask", rpm: int = 60) -> ModelbusConfig:
    return ModelbusConfig(
        models=[ModelConfig(name="assistant"), ModelConfig(name="assistant-de"), ModelConfig(name="finance")],
        roles=[RoleConfig(name="helpers", models=["assistant*"])],
        routes=[
            RouteRule(name="german", match=RouteMatch(model="assistant", languages=["de"]), target=route_to)
        ],
        consumers=[
            ConsumerConfig(
                name="team-a",
                roles=["helpers"],
                guardrails=GuardrailsConfig(pii=pii),  # type: ignore[arg-type]
                limits=Limits(requests_per_min=rpm),
            )
        ],
    )


def _write(tmp: Path, name: str, config: ModelbusConfig, tests: bool = True) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(dump_config(config))
    if tests:
        (tmp / f"{name}.tests.yaml").write_text(yaml.safe_dump(TESTS))
    return path


def _cli(cluster: Cluster, *args: str) -> Result:
    """`modelbus config ...` in this process (as its own process it costs seconds of start-up)."""
    return CliRunner().invoke(app, ["config", *args], env=cluster.env())


def _applies(cluster: Cluster) -> list[dict[str, object]]:
    """The `config.apply` audit events in the audit stream, oldest first."""

    async def read() -> list[dict[str, object]]:
        nc = await nats.connect(cluster.nats_url)
        try:
            js, stream = nc.jetstream(), cluster.subjects.audit_stream
            last = (await js.stream_info(stream)).state.last_seq
            # Read by sequence: the audit stream is a work queue, and a consumer would take them.
            messages = [await js.get_msg(stream, seq) for seq in range(1, last + 1)]
            return [
                json.loads(m.data or b"{}") for m in messages if m.subject == cluster.subjects.audit("cli")
            ]
        finally:
            await nc.close()

    return [e for e in asyncio.run(read()) if e["endpoint"] == "config.apply"]


def test_assertions_and_weakening_guard_every_apply(cluster: Cluster) -> None:
    good = _write(cluster.tmp, "good", _config())
    tested = _cli(cluster, "test", str(good))
    assert tested.exit_code == 0, tested.stdout + tested.stderr
    assert "5 passed, 0 failed" in tested.stdout
    assert _cli(cluster, "apply", str(good)).exit_code == 0

    # A route moved: the German assertion fails, nothing is stored, the running revision stays.
    moved = _write(cluster.tmp, "moved", _config(route_to="assistant"))
    refused = _cli(cluster, "apply", str(moved), "--confirm-weakening")
    assert refused.exit_code == 1, refused.stdout
    assert (
        "FAIL  team-a asking assistant: reaches assistant-de  (admitted, served by assistant)"
        in refused.stdout
    )
    assert "nothing applied" in refused.stderr
    assert _cli(cluster, "show").stdout == good.read_text()

    # PII logged instead of masked and a higher rate limit: weakenings, refused unless confirmed.
    looser = _config(pii="log", rpm=90)
    loose = _write(cluster.tmp, "loose", looser, tests=False)
    diff = _cli(cluster, "diff", str(loose))
    assert "-    pii: mask\n+    pii: log" in diff.stdout, diff.stdout
    assert "WEAKENS consumer team-a guardrails: pii mask -> log" in diff.stdout
    assert "WEAKENS consumer team-a limits: requests_per_min 60 -> 90" in diff.stdout
    unconfirmed = _cli(cluster, "apply", str(loose))
    assert unconfirmed.exit_code == 1 and "weakens policy; nothing applied" in unconfirmed.stderr
    assert _cli(cluster, "show").stdout == good.read_text()
    # ... and the assertions still stand in the way when they are run: PII would reach the model.
    failing = _cli(cluster, "test", str(loose), "--tests", str(cluster.tmp / "good.tests.yaml"))
    assert failing.exit_code == 1 and "reaches the model unmasked" in failing.stdout
    confirmed = _cli(cluster, "apply", str(loose), "--confirm-weakening")
    assert confirmed.exit_code == 0, confirmed.stderr
    assert _cli(cluster, "show").stdout == loose.read_text()

    applies = _applies(cluster)
    assert len(applies) == 2  # the refused attempts stored nothing and were not recorded as applies
    first, second = (a["input"] for a in applies)
    assert first["assertions_held"] and not first["weakenings_confirmed"]  # type: ignore[index]
    assert second["previous"] == first["revision"]  # type: ignore[index]
    assert "+    pii: log" in second["diff"]  # type: ignore[index]
    assert "consumer team-a guardrails: pii mask -> log" in second["weakenings_confirmed"]  # type: ignore[index]
    assert str(applies[1]["consumer"]).startswith("cli:")  # who applied it
