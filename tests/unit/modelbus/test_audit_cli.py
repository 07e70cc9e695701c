"""`modelbus audit compare` and `audit query` answer a person: tables, the most changed answers
first, a meaning similarity from an embeddings model served through the bus; `--json` for tools."""

from __future__ import annotations

import asyncio
import json
import re
import time

from typer.testing import CliRunner

from dispatcher.audit.ledger import AuditStore
from dispatcher.store.database import create_engine
from modelbus.cli import app
from schemas.audit import AuditEvent, AuditStatus
from schemas.config import Endpoint, ModelConfig, SimulatorBackend
from tests.support.servers import Cluster, with_consumers

ANSWERS = {  # prompt: (v1's answer, v2's answer)
    "What is the capital of France?": ("Paris is the capital of France.", "Paris is the capital of France."),
    "When is the meeting?": ("The meeting is at 10 am in room 4.", "The meeting is at 11 am in room 4."),
    "Can you help me with my taxes?": (
        "Yes, send me your figures.",
        "I cannot give tax advice; ask an adviser.",
    ),
}


def _events() -> list[AuditEvent]:
    now = int(time.time() * 1000)
    events = []
    for n, (prompt, answers) in enumerate(ANSWERS.items()):
        for version, answer in zip(("v1", "v2"), answers, strict=True):
            events.append(
                AuditEvent(
                    event_id=f"{version}-{n}",
                    request_id=f"{version}-{n}",
                    endpoint="chat",
                    status=AuditStatus.SERVED,
                    http_status=200,
                    consumer="team-a",
                    model_served="m",
                    version=version,
                    input={"messages": [{"role": "user", "content": prompt}]},
                    output={"choices": [{"message": {"content": answer}, "finish_reason": "stop"}]},
                    prompt_hash=f"p{n}",
                    finish_reason="stop",
                    prompt_tokens=10,
                    completion_tokens=len(answer) // 4,
                    total_tokens=10 + len(answer) // 4,
                    received_ms=now,
                    finished_ms=now + (40 if version == "v1" else 90),
                )
            )
    return events


def _store(database_url: str) -> None:
    async def append() -> None:
        engine = create_engine(database_url)
        try:
            await AuditStore(engine).append(_events())
        finally:
            await engine.dispose()

    asyncio.run(append())


def test_compare_ranks_changed_answers_in_a_readable_table(database_url: str, cluster: Cluster) -> None:
    _store(database_url)
    embed = ModelConfig(
        name="embed", endpoints=[Endpoint.EMBEDDINGS], backend=SimulatorBackend(embedding_dim=32)
    )
    path = cluster.write_config(with_consumers([ModelConfig(name="m"), embed]))
    cluster.worker("embed", path, "w-embed")
    env = {**cluster.env(path), "MODELBUS_DATABASE_URL": database_url}
    runner = CliRunner()

    args = ["audit", "compare", "--model", "m", "--old", "v1", "--new", "v2"]
    shown = runner.invoke(app, args, env=env)
    assert shown.exit_code == 0, shown.output
    text = shown.stdout
    assert "m: v1 → v2" in text and "finish reasons" in text and "stop 3" in text
    assert re.search(r"│ v2\s*│\s*3\s*│\s*0\.0 %\s*│", text), text
    order = [
        text.index(prompt) for prompt in ("help me with my taxes", "When is the meeting", "capital of France")
    ]
    assert order == sorted(order), text  # the most changed answer first, the unchanged one last

    # With an embeddings model, a meaning similarity too (the simulator's vectors say only "same or
    # not"; bench/semantic_cache_eval.py measures a real model), and the ranking follows it.
    semantic = runner.invoke(app, [*args, "--semantic", "embed"], env=env)
    assert semantic.exit_code == 0, semantic.output
    assert "meaning sim." in semantic.stdout
    unchanged = next(line for line in semantic.stdout.splitlines() if "capital of France" in line)
    assert re.match(r"│\s*1\.00\s*│\s*1\.00\s*│", unchanged), unchanged
    assert semantic.stdout.index("capital of France") > semantic.stdout.index("taxes")

    report = json.loads(runner.invoke(app, [*args, "--json"], env=env).stdout)
    assert [p["similarity"] for p in report["pairs"]] == sorted(p["similarity"] for p in report["pairs"])
    assert report["versions"]["v2"]["requests"] == 3

    listed = runner.invoke(app, ["audit", "query", "--model", "m", "--version", "v2"], env=env)
    assert listed.exit_code == 0, listed.output
    assert "3 audit records" in listed.stdout and "I cannot give tax advice" in listed.stdout
    rows = json.loads(runner.invoke(app, ["audit", "query", "--model", "m", "--json"], env=env).stdout)
    assert len(rows) == 6 and rows[0]["input"]["messages"]
