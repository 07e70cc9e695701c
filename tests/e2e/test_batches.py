"""The OpenAI Files and Batch APIs with the unmodified SDK: a 1,000-line batch on the batch lane."""

from __future__ import annotations

import io
import statistics
import threading
import time

import httpx
import openai
import orjson
import pytest

from schemas.config import ModelConfig, SimulatorBackend
from tests.support.servers import OTHER_KEY, TEST_KEY, Cluster, sql, with_consumers

LINES = 1000
BAD_LINES = {7, 500}  # these ask for more tokens than the model's context: the backend says 400


def _input_file() -> bytes:
    lines = []
    for n in range(LINES):
        body = {
            "model": "chat-sim",
            "messages": [{"role": "user", "content": f"line {n}"}],
            "max_tokens": 50_000 if n in BAD_LINES else 3,
        }
        lines.append(
            orjson.dumps(
                {"custom_id": f"req-{n}", "method": "POST", "url": "/v1/chat/completions", "body": body}
            )
        )
    return b"\n".join(lines) + b"\n"


def _p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[18]


def _interactive_latencies(gateway: str, count: int) -> list[float]:
    latencies = []
    with httpx.Client(
        base_url=gateway, headers={"Authorization": f"Bearer {TEST_KEY}"}, timeout=30
    ) as client:
        for n in range(count):
            started = time.perf_counter()
            response = client.post(
                "/chat/completions",
                json={
                    "model": "chat-sim",
                    "max_tokens": 3,
                    "messages": [{"role": "user", "content": f"i{n}"}],
                },
            )
            assert response.status_code == 200
            latencies.append((time.perf_counter() - started) * 1000)
    return latencies


@pytest.fixture
def gateway(database_url: str, cluster: Cluster) -> str:
    model = ModelConfig(
        name="chat-sim", max_concurrency=8, backend=SimulatorBackend(ttft_ms=10, tokens_per_s=500, capacity=8)
    )
    config = cluster.write_config(with_consumers([model]))
    with cluster.together():
        cluster.dispatcher(config, database_url)
        url = cluster.ingress(config, MODELBUS_DATABASE_URL=database_url)
        cluster.worker("chat-sim", config, "w-1")
    return url


def test_thousand_line_batch_completes_while_interactive_latency_holds(
    gateway: str, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    client = openai.OpenAI(base_url=gateway, api_key=TEST_KEY, max_retries=0, timeout=60)
    _interactive_latencies(gateway, 10)  # warm up
    baseline = _interactive_latencies(gateway, 60)

    uploaded = client.files.create(file=("input.jsonl", io.BytesIO(_input_file())), purpose="batch")
    assert uploaded.bytes > 0 and uploaded.purpose == "batch"
    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"job": "nightly"},
    )
    assert batch.status == "in_progress" and batch.request_counts.total == LINES

    during: list[float] = []
    measuring = threading.Thread(target=lambda: during.extend(_interactive_latencies(gateway, 60)))
    measuring.start()
    deadline = time.monotonic() + 240
    while batch.status not in ("completed", "failed", "cancelled") and time.monotonic() < deadline:
        time.sleep(0.5)
        batch = client.batches.retrieve(batch.id)
    measuring.join()
    assert batch.status == "completed", batch
    assert batch.request_counts.completed == LINES - len(BAD_LINES)
    assert batch.request_counts.failed == len(BAD_LINES)
    assert batch.metadata == {"job": "nightly"}

    output = [orjson.loads(line) for line in client.files.content(batch.output_file_id).text.splitlines()]
    assert [line["custom_id"] for line in output] == [f"req-{n}" for n in range(LINES) if n not in BAD_LINES]
    for line in output:
        assert line["response"]["status_code"] == 200
        assert len(line["response"]["body"]["choices"][0]["message"]["content"].split()) == 3
    errors = [orjson.loads(line) for line in client.files.content(batch.error_file_id).text.splitlines()]
    assert sorted(line["custom_id"] for line in errors) == sorted(f"req-{n}" for n in BAD_LINES)
    assert all("context length" in line["error"]["message"] for line in errors)

    with capsys.disabled():
        print(
            f"\ninteractive p95 without batch {_p95(baseline):.1f} ms, during the batch {_p95(during):.1f} ms "
            f"({LINES} lines)"
        )
    # Interactive work goes first and always has free slots: the batch may cost a little, not a lot.
    assert _p95(during) < _p95(baseline) * 2 + 25

    def audit_kinds() -> dict[str, int]:
        rows = sql(database_url, "SELECT kind, count(*) AS n FROM audit_log GROUP BY kind")
        return {row["kind"]: row["n"] for row in rows}

    deadline = time.monotonic() + 30
    while audit_kinds().get("batch", 0) < LINES and time.monotonic() < deadline:
        time.sleep(0.5)
    assert audit_kinds()["batch"] == LINES  # one audit row per batch line


def test_files_are_private_and_deletable(gateway: str) -> None:
    mine = openai.OpenAI(base_url=gateway, api_key=TEST_KEY, max_retries=0)
    theirs = openai.OpenAI(base_url=gateway, api_key=OTHER_KEY, max_retries=0)
    line = orjson.dumps(
        {
            "custom_id": "a",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "chat-sim", "messages": [{"role": "user", "content": "hi"}]},
        }
    )
    uploaded = mine.files.create(file=("a.jsonl", io.BytesIO(line + b"\n")), purpose="batch")
    assert mine.files.retrieve(uploaded.id).filename == "a.jsonl"
    assert mine.files.content(uploaded.id).content == line + b"\n"
    assert uploaded.id in [f.id for f in mine.files.list()]
    with pytest.raises(openai.NotFoundError):
        theirs.files.retrieve(uploaded.id)
    assert mine.files.delete(uploaded.id).deleted
    with pytest.raises(openai.NotFoundError):
        mine.files.retrieve(uploaded.id)


def test_invalid_batch_file_is_refused_at_upload_with_the_line_number(gateway: str) -> None:
    client = openai.OpenAI(base_url=gateway, api_key=TEST_KEY, max_retries=0)
    good = b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "chat-sim", "messages": [{"role": "user", "content": "x"}]}}\n'
    bad = b'{"custom_id": "b", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "chat-sim"}}\n'
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.create(file=("bad.jsonl", io.BytesIO(good + bad)), purpose="batch")
    assert "line 2" in caught.value.message and caught.value.code == "invalid_batch_line"
    assert client.files.list().data == []  # nothing was stored


def test_cancelled_batch_ends_cancelled_with_the_unrun_lines_as_errors(
    database_url: str, cluster: Cluster
) -> None:
    model = ModelConfig(
        name="slow", max_concurrency=2, backend=SimulatorBackend(ttft_ms=300, tokens_per_s=100, capacity=2)
    )
    config = cluster.write_config(with_consumers([model]))
    with cluster.together():
        cluster.dispatcher(config, database_url)
        gateway = cluster.ingress(config, MODELBUS_DATABASE_URL=database_url)
        cluster.worker("slow", config, "w-slow")
    client = openai.OpenAI(base_url=gateway, api_key=TEST_KEY, max_retries=0, timeout=60)
    lines = b"".join(
        orjson.dumps(
            {
                "custom_id": f"c{n}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "slow", "max_tokens": 2, "messages": [{"role": "user", "content": "x"}]},
            }
        )
        + b"\n"
        for n in range(40)
    )
    uploaded = client.files.create(file=("c.jsonl", io.BytesIO(lines)), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    time.sleep(1.0)
    assert client.batches.cancel(batch.id).status == "cancelling"
    deadline = time.monotonic() + 60
    while batch.status != "cancelled" and time.monotonic() < deadline:
        time.sleep(0.3)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "cancelled"
    counts = batch.request_counts
    assert counts.completed + counts.failed == 40
    assert counts.failed >= 30  # most lines never ran
    errors = client.files.content(batch.error_file_id).text.splitlines()
    assert all(orjson.loads(line)["error"]["code"] == "cancelled" for line in errors)
