"""A database superuser who deletes the newest audit rows and rewinds the chain head leaves a chain
that still verifies inside Postgres; the signed checkpoints the sink keeps in NATS give it away."""

from __future__ import annotations

import subprocess
import sys

import httpx

from dispatcher.audit.checkpoints import new_signing_key, signing_key, verify_key_of
from schemas.config import ModelConfig, SimulatorBackend
from tests.support.servers import TEST_KEY, Cluster, execute, sql, wait_until, with_consumers

REQUESTS = 12


def _verify(cluster: Cluster, database_url: str, verify_key: str | None) -> subprocess.CompletedProcess[str]:
    extra = {"MODELBUS_DATABASE_URL": database_url}
    if verify_key is not None:
        extra["MODELBUS_AUDIT_VERIFY_KEY"] = verify_key
    return subprocess.run(
        [sys.executable, "-m", "modelbus.cli", "audit", "verify"],
        env=cluster.env(**extra),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_removing_the_newest_rows_as_superuser_is_detected(cluster: Cluster, database_url: str) -> None:
    private = new_signing_key()
    public = verify_key_of(signing_key(private))
    path = cluster.write_config(with_consumers([ModelConfig(name="m", backend=SimulatorBackend(ttft_ms=1))]))
    with cluster.together():
        cluster.dispatcher(path, database_url, MODELBUS_AUDIT_SIGNING_KEY=private)
        gateway = cluster.ingress(path)
        cluster.worker("m", path, "w-1")
    with httpx.Client(
        base_url=gateway, headers={"Authorization": f"Bearer {TEST_KEY}"}, timeout=30
    ) as client:
        for n in range(REQUESTS):
            body = {"model": "m", "max_tokens": 2, "messages": [{"role": "user", "content": f"n{n}"}]}
            assert client.post("/chat/completions", json=body).status_code == 200
    wait_until(
        lambda: sql(database_url, "SELECT seq FROM audit_chain_head")[0]["seq"] >= REQUESTS,
        20,
        "audit rows not written",
    )
    intact = _verify(cluster, database_url, public)
    assert intact.returncode == 0, intact.stdout + intact.stderr
    assert f"{REQUESTS} rows checked, 0 problems" in intact.stdout

    # The superuser's edit: triggers off for the session, the newest three rows gone, the head
    # rewound to the row that is now last, so the chain inside Postgres is whole again.
    execute(
        database_url,
        f"""
        SET session_replication_role = replica;
        DELETE FROM audit_log WHERE seq > {REQUESTS - 3};
        UPDATE audit_chain_head SET seq = {REQUESTS - 3},
            hash = (SELECT row_hash FROM audit_log WHERE seq = {REQUESTS - 3});
        """,
    )
    tampered = _verify(cluster, database_url, public)
    assert tampered.returncode == 1, tampered.stdout
    assert "newest rows removed" in tampered.stdout and f"ends at seq {REQUESTS - 3}" in tampered.stdout
    assert "rewound" in tampered.stdout

    # A checkpoint key that is not the dispatcher's proves nothing: every checkpoint fails to verify.
    stranger = _verify(cluster, database_url, verify_key_of(signing_key(new_signing_key())))
    assert stranger.returncode == 1 and "signature does not verify" in stranger.stdout

    # Without a verify key, verify says it could not check for truncation.
    unchecked = _verify(cluster, database_url, None)
    assert unchecked.returncode == 0 and "checkpoints not checked" in unchecked.stderr
