"""`modelbus nats-config`: private credentials per component, hashes only in the server block."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from dispatcher.bus.nats_permissions import worker
from dispatcher.bus.subjects import Subjects
from modelbus.cli import app
from schemas.envelope import Lane


def test_writes_private_credentials_and_hashed_server_block(tmp_path: Path) -> None:
    out = tmp_path / "nats"
    result = CliRunner().invoke(
        app,
        ["nats-config", "--out", str(out), "--namespace", "ns", "--ingress", "e1", "--worker", "g1=m1,m2"],
    )
    assert result.exit_code == 0, result.output
    server = (out / "nats-authorization.conf").read_text()
    for user in ("ns-dispatcher", "ns-admin", "ns-ingress-e1", "ns-worker-g1"):
        env = out / f"{user}.env"
        assert env.stat().st_mode & 0o777 == 0o600
        password = dict(line.split("=", 1) for line in env.read_text().splitlines())["MODELBUS_NATS_PASSWORD"]
        assert password not in server and password not in result.output
        assert f'user: "{user}"' in server
    assert server.count('password: "$2a$') == 4


def test_bad_worker_spec_is_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["nats-config", "--out", str(tmp_path), "--worker", "no-models"])
    assert result.exit_code != 0


def _wildcards(subjects: tuple[str, ...]) -> list[list[int]]:
    return [[i for i, token in enumerate(s.split(".")) if token in ("*", ">")] for s in subjects]


@given(st.text(min_size=1, max_size=20))
def test_model_names_cannot_widen_a_workers_grant(model: str) -> None:
    subjects = Subjects("mb")
    grant = worker("mb", "w", {model: ["default"]})
    pulls = [s for s in grant.publish_allow if ".MSG.NEXT." in s]
    assert pulls == [
        f"$JS.API.CONSUMER.MSG.NEXT.{subjects.request_stream}.{subjects.consumer(model, 'default', lane)}"
        for lane in Lane
    ]
    # Same shape, wildcard for wildcard, as the grant for a harmless name: nothing widened.
    plain = worker("mb", "w", {"plain": ["default"]})
    assert _wildcards(grant.publish_allow) == _wildcards(plain.publish_allow)
    assert all(
        len(s.split(".")) == len(p.split(".")) for s, p in zip(grant.publish_allow, plain.publish_allow)
    )
