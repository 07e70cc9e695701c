"""`modelbus nats-config`: the nats-server authorization block and one credentials file per component."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated

import typer

from dispatcher.bus.nats_permissions import NatsUser, components, hash_password, render_server_config
from dispatcher.config.config_file import load_config

SERVER_FILE = "nats-authorization.conf"


def generate(
    out_dir: Path,
    namespace: str,
    ingress_ids: Sequence[str],
    workers: Mapping[str, Mapping[str, Sequence[str]]],
    buckets: Mapping[str, int] | None = None,
) -> dict[str, Path]:
    """Write the server block and `<user>.env` per component (mode 0600); return user -> env file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    users: list[NatsUser] = []
    written: dict[str, Path] = {}
    for component in components(namespace, ingress_ids, workers, buckets):
        password = secrets.token_urlsafe(24)
        users.append(NatsUser(component.user, component.permissions, hash_password(password)))
        path = out_dir / f"{component.user}.env"
        _write_private(
            path,
            f"MODELBUS_NAMESPACE={namespace}\n"
            f"MODELBUS_NATS_USER={component.user}\n"
            f"MODELBUS_NATS_PASSWORD={password}\n"
            f"MODELBUS_MANAGE_TOPOLOGY={'true' if component.manage_topology else 'false'}\n",
        )
        written[component.user] = path
    (out_dir / SERVER_FILE).write_text(render_server_config(users))
    return written


def _write_private(path: Path, text: str) -> None:
    """Readable by the owner only, even when the file existed with wider permissions."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def _worker_models(specs: list[str], config: Path | None) -> dict[str, dict[str, list[str]]]:
    versions: dict[str, list[str]] = {}
    if config is not None:
        versions = {m.name: list(m.version_names) for m in load_config(config).models}
    workers: dict[str, dict[str, list[str]]] = {}
    for spec in specs:
        worker_id, sep, names = spec.partition("=")
        models = [n for n in names.split(",") if n]
        if not sep or not worker_id or not models:
            raise typer.BadParameter(f"{spec!r}: expected WORKER_ID=model[,model...]")
        workers[worker_id] = {m: versions.get(m, ["default"]) for m in models}
    return workers


def nats_config(
    out: Annotated[Path, typer.Option(help="directory for the server block and credentials")],
    ingress: Annotated[list[str], typer.Option(help="ingress id (MODELBUS_INGRESS_ID); repeatable")] = [],  # noqa: B006
    worker: Annotated[
        list[str],
        typer.Option(help="WORKER_ID=model[,model]; repeatable (worker ids are MODELBUS_WORKER_ID)"),
    ] = [],  # noqa: B006
    namespace: Annotated[str, typer.Option(envvar="MODELBUS_NAMESPACE")] = "mb",
    config: Annotated[
        Path | None, typer.Option(envvar="MODELBUS_CONFIG", help="config file: model versions to grant")
    ] = None,
) -> None:
    """Generate per-component NATS users with subject permissions (passwords bcrypt-hashed)."""
    buckets = {m.name: m.affinity_buckets for m in load_config(config).models} if config else {}
    written = generate(out, namespace, ingress, _worker_models(worker, config), buckets)
    typer.echo(f"server block: {out / SERVER_FILE}  (include it in nats-server.conf)")
    for user, path in written.items():
        typer.echo(f"  {user}: {path}")
