"""The semantic cache against real servers. The simulator's embeddings are not semantic (equal texts,
equal vectors; others unrelated), so these tests check the plumbing: the shared index, scope,
eligibility, version invalidation, the degradation step and the audit row. How well it matches by
meaning is measured with a real embedding model in bench/semantic_cache_eval.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from schemas.config import Endpoint, ModelConfig, SimulatorBackend, VersionConfig
from schemas.traffic import SemanticCacheConfig
from tests.support.servers import OTHER_KEY, TEST_KEY, Cluster, audit_records, wait_until, with_consumers

FAST = SimulatorBackend(ttft_ms=2, tokens_per_s=5000, default_max_tokens=8)
EMBED = ModelConfig(name="embed", endpoints=[Endpoint.EMBEDDINGS], backend=SimulatorBackend(embedding_dim=64))
QUESTION = "How do I reset my password?"
CACHE = "x-modelbus-cache"


def _chat(gateway: str, key: str, content: str = QUESTION, **extra: Any) -> httpx.Response:
    body = {"model": "chat", "max_tokens": 8, "messages": [{"role": "user", "content": content}], **extra}
    response = httpx.post(
        f"{gateway}/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30
    )
    assert response.status_code == 200, response.text
    return response


def _config(first_look: bool, version: str = "v1") -> Any:
    semantic = SemanticCacheConfig(embedding_model="embed", threshold=0.95, first_look=first_look)
    chat = ModelConfig(
        name="chat", backend=FAST, semantic_cache=semantic, versions=[VersionConfig(name=version)]
    )
    return with_consumers([chat, EMBED])


def _apply(cluster: Cluster, path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "modelbus.cli", "config", "apply", str(path)],
        check=False,
        env=cluster.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def test_first_look_answers_a_repeat_from_any_ingress_for_the_same_consumer_only(
    database_url: str, cluster: Cluster
) -> None:
    path = cluster.write_config(_config(first_look=True))
    with cluster.together():
        cluster.dispatcher(path, database_url)
        one, two = cluster.ingress(path), cluster.ingress(path)
        cluster.worker("chat", path, "w-chat", version="v1")
        cluster.worker("embed", path, "w-embed")

    first = _chat(one, TEST_KEY)
    assert CACHE not in first.headers
    # Stored by the first ingress after it answered, found by the second through the shared bucket.
    wait_until(lambda: CACHE in _chat(two, TEST_KEY).headers, 10, "the second ingress never hit")
    hit = _chat(two, TEST_KEY)
    assert hit.headers[CACHE] == "semantic;similarity=1.00"
    assert hit.json() == first.json()

    assert CACHE not in _chat(two, OTHER_KEY).headers  # another consumer's answer: not shared
    assert CACHE not in _chat(two, TEST_KEY, "How do I delete my account?").headers  # unrelated
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    assert CACHE not in _chat(two, TEST_KEY, tools=tools).headers  # tools: never from the cache
    assert CACHE not in _chat(two, TEST_KEY, n=2).headers  # several choices: never
    assert CACHE not in _chat(two, TEST_KEY, max_tokens=7).headers  # the rest must be identical

    wait_until(
        lambda: any(
            a.startswith("cache:semantic;similarity=1.000;from=")
            for r in audit_records(database_url, "status = 'served'")
            for a in r["policy_actions"]
        ),
        15,
        "no audit row names the semantic hit",
    )
    source = next(
        a.rsplit("from=", 1)[1]
        for r in audit_records(database_url)
        for a in r["policy_actions"]
        if a.startswith("cache:semantic")
    )
    assert source == first.headers["x-request-id"]  # the row says whose answer it was

    # A new version of the model: its answers are not the old version's.
    _apply(cluster, cluster.write_config(_config(first_look=True, version="v2"), "v2.yaml"))
    cluster.worker("chat", path, "w-chat-v2", version="v2")
    wait_until(lambda: _chat(one, TEST_KEY).headers.get("x-modelbus-version") == "v2", 15, "v2 never served")
    assert CACHE not in _chat(one, TEST_KEY, "What is my quota?").headers


def test_semantic_cache_step_answers_when_the_model_is_down(cluster: Cluster) -> None:
    config = _config(first_look=False)
    config.consumers[0].degradation = ["semantic_cache", "fail"]
    path = cluster.write_config(config)
    with cluster.together():
        gateway = cluster.ingress(path)
        worker = cluster.worker("chat", path, "w-chat", version="v1")
        cluster.worker("embed", path, "w-embed")

    first = _chat(gateway, TEST_KEY)
    second = _chat(gateway, TEST_KEY)
    assert CACHE not in second.headers  # no first look: a healthy model answers itself
    worker.stop()
    wait_until(
        lambda: (
            httpx.post(
                f"{gateway}/chat/completions",
                json={"model": "chat", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]},
                headers={"Authorization": f"Bearer {TEST_KEY}"},
                timeout=10,
            ).status_code
            == 503
        ),
        15,
        "the model never counted as down",
    )
    degraded = _chat(gateway, TEST_KEY)
    assert degraded.headers["x-modelbus-degraded"] == "semantic_cache:no_live_workers"
    assert degraded.headers[CACHE] == "semantic;similarity=1.00"
    assert degraded.json()["choices"] in (first.json()["choices"], second.json()["choices"])
