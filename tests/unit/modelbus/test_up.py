"""`modelbus up`, the README's first command: the whole stack from one process, and a clean stop."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import ClassVar

import httpx
import openai
import pytest

from dispatcher.webhooks.signing import verify_standard
from modelbus.embedded_nats import free_port
from tests.support.servers import sql, wait_until


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry.name))
    return found


def _audit_rows(url: str) -> list[dict[str, object]]:
    return sql(url, "SELECT consumer, status FROM audit_log")


def _printed(tmp_path: Path, label: str) -> str:
    return next(
        line.split(label, 1)[1].split("(or")[0].strip()
        for line in (tmp_path / "up.log").read_text().splitlines()
        if label in line
    )


def _run_as_printed(command: str, extra: list[str], state: Path) -> subprocess.CompletedProcess[str]:
    """A command as `up` told the user to type it, in a fresh shell of the same user: none of the
    stack's variables (the user's state directory is the test's, so no other `up` is seen)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELBUS_")}
    env["XDG_STATE_HOME"] = str(state)
    words = shlex.split(command)
    while "=" in words[0]:
        name, value = words.pop(0).split("=", 1)
        env[name] = value
    assert words[0] == "modelbus", command
    argv = [sys.executable, "-m", "modelbus.cli", *words[1:], *extra]
    return subprocess.run(argv, check=False, env=env, capture_output=True, text=True, timeout=60)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class _Hook(BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[dict[str, str], bytes]]] = []

    def do_POST(self) -> None:
        _Hook.received.append((dict(self.headers), self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_up_serves_both_demo_models_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    hook = HTTPServer(("127.0.0.1", free_port()), _Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    hook_port = hook.server_address[1]
    state = tmp_path / "state"
    env = {
        **os.environ,
        "MODELBUS_DEV_KEY": "mb-up-test-key",
        "MODELBUS_WEBHOOK_ALLOW": f"127.0.0.1:{hook_port}",  # the test's receiver, and only it
        "XDG_STATE_HOME": str(state),
    }
    for name in ("MODELBUS_NATS_URL", "MODELBUS_CONFIG", "MODELBUS_DATABASE_URL", "MODELBUS_WEBHOOK_SECRET"):
        env.pop(name, None)
    log = open(tmp_path / "up.log", "wb")  # noqa: SIM115
    up = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "modelbus.cli",
            "up",
            "--port",
            str(port),
            "--data-dir",
            str(tmp_path / "data"),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(
            lambda: "API key:  mb-up-test-key" in (tmp_path / "up.log").read_text(),
            60,
            "modelbus up did not report ready",
        )
        assert f"http://127.0.0.1:{port}/v1" in (tmp_path / "up.log").read_text()
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="mb-up-test-key", max_retries=0
        )
        assert sorted(m.id for m in client.models.list()) == ["demo-chat", "demo-embed"]
        chat = client.chat.completions.create(model="demo-chat", messages=[{"role": "user", "content": "hi"}])
        assert chat.choices[0].message.content
        assert len(client.embeddings.create(model="demo-embed", input="hi").data[0].embedding) == 384
        children = _children(up.pid)
        assert len(children) == 5  # nats-server, dispatcher, two workers, ingress
        # The embedded Postgres holds the audit trail: both inference calls above arrive there.
        database = next(
            line.split("database:", 1)[1].strip()
            for line in (tmp_path / "up.log").read_text().splitlines()
            if "database:" in line
        )
        # Two inference rows, and the `config.apply` row of revision 1, made by `up` itself.
        wait_until(lambda: len(_audit_rows(database)) == 3, 30, "audit rows did not reach Postgres")
        rows = _audit_rows(database)
        assert sorted(str(row["consumer"]).split(":")[0] for row in rows) == ["cli", "dev", "dev"]
        assert "Warning" not in (tmp_path / "up.log").read_text()  # a clean start prints no warnings
        # Webhooks are signed with a secret `up` made and kept; it prints where, never the value.
        secret_file = tmp_path / "data" / "webhook-secret"
        secret = secret_file.read_text().strip()
        assert secret_file.stat().st_mode & 0o777 == 0o600
        assert f"webhooks: signed with the secret in {secret_file}" in (tmp_path / "up.log").read_text()
        assert secret not in (tmp_path / "up.log").read_text()
        task = httpx.post(
            f"http://127.0.0.1:{port}/v1/tasks",
            headers={"Authorization": "Bearer mb-up-test-key"},
            json={
                "endpoint": "chat.completions",
                "body": {"model": "demo-chat", "messages": [{"role": "user", "content": "hi"}]},
                "webhook": {"url": f"http://127.0.0.1:{hook_port}/hook"},
            },
        )
        assert task.status_code == 202, task.text
        wait_until(lambda: len(_Hook.received) == 1, 30, "the webhook was not delivered")
        headers, body = _Hook.received[0]
        assert verify_standard(
            secret, headers["webhook-id"], headers["webhook-timestamp"], headers["webhook-signature"], body
        )
        # Printed without variables even when NATS is not on its default port (4222 is often taken
        # by a system nats-server): `top` finds this stack through `up`'s record.
        assert _printed(tmp_path, "watch:") == "modelbus top"
        top = _run_as_printed(_printed(tmp_path, "watch:"), ["--once"], state)
        assert top.returncode == 0, top.stderr
        for model in ("demo-chat", "demo-embed"):
            # model, version, queued, trend, ack pending, redelivered, workers: each has its worker.
            assert re.search(rf"│\s*{model}\s*│\s*default\s*│(?:[^│]*│){{4}}\s*1\s*│", top.stdout), top.stdout
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(60)
        log.close()
        hook.shutdown()
    assert up.returncode == 0
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in children), "modelbus up left processes behind"
    assert not (state / "modelbus" / "up.json").exists(), "a stopped stack left its record"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz")
