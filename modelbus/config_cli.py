"""`modelbus config validate|apply|show|diff|history`: configuration as code, stored in NATS KV."""

from __future__ import annotations

import asyncio
import difflib
import hashlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from dispatcher.api_keys import KeyRegistry, config_key_ids
from dispatcher.config_file import ConfigError, parse_config
from dispatcher.config_store import ConfigStore, Revision
from dispatcher.connection import connect, supports_msg_ttl
from dispatcher.settings import BusSettings
from dispatcher.subjects import Subjects
from dispatcher.topology import ensure_streams
from modelbus.cli_audit import audit_action

config_app = typer.Typer(help="Validate, apply and inspect the configuration.", no_args_is_help=True)
T = TypeVar("T")


def _with_store(work: Callable[[ConfigStore], Awaitable[T]]) -> T:
    async def main() -> T:
        settings = BusSettings()
        nc = await connect(settings, name="modelbus-config")
        try:
            store = await ConfigStore.open(nc.jetstream(), Subjects(settings.namespace), settings)
            return await work(store)
        finally:
            await nc.close()

    return asyncio.run(main())


async def apply_text(settings: BusSettings, text: str, source: str, *, first: bool = False) -> int | None:
    """Store a revision, unless it gives a key an id an issued key has; audited with the diff.

    `first`: only if nothing is applied yet (`modelbus up`); returns None when something was."""
    subjects = Subjects(settings.namespace)
    nc = await connect(settings, name="modelbus-config")
    try:
        js = nc.jetstream()
        # The audit row below needs the audit stream, which a stack being started has not made yet.
        await ensure_streams(js, subjects, settings, nc.max_payload, supports_msg_ttl(nc))
        store = await ConfigStore.open(js, subjects, settings)
        issued = {record.id for record in await (await KeyRegistry.open(js, subjects, settings)).list()}
        clash = sorted(config_key_ids(parse_config(text, source)) & issued)
        if clash:
            raise ConfigError(
                f"{source}: key ids {clash} belong to issued keys (`modelbus keys list`); choose other ids"
            )
        current = await store.current()
        revision = await store.apply_first(text, source) if first else await store.apply(text, source)
        if revision is None:
            return None
        old = current.text if current is not None else ""
        target = {
            "revision": revision,
            "previous": current.number if current is not None else None,
            "source": source,
            "sha256": hashlib.sha256(text.encode()).hexdigest(),
            "diff": _unified(old, text, current, source),
        }
        await audit_action(js, subjects, "config.apply", target)
        return revision
    finally:
        await nc.close()


def _unified(old: str, new: str, current: Revision | None, source: str) -> str:
    label = f"revision {current.number}" if current else "(nothing applied)"
    return "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True), label, source))


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        typer.secho(f"modelbus: cannot read {path}: {exc.strerror}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None


def _validated(path: Path) -> str:
    text = _read(path)
    try:
        parse_config(text, str(path))
    except ConfigError as exc:
        typer.secho(str(exc), fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    return text


@config_app.command("validate")
def validate(file: Path) -> None:
    """Check a config file; errors name the field and the line."""
    config = parse_config(_validated(file), str(file))
    typer.echo(f"{file}: valid ({len(config.models)} models, {len(config.consumers)} consumers)")


@config_app.command("apply")
def apply(file: Path) -> None:
    """Validate and store a new revision; every running process switches to it."""
    text = _validated(file)
    try:
        revision = asyncio.run(apply_text(BusSettings(), text, str(file)))
    except ConfigError as exc:
        typer.secho(str(exc), fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    typer.echo(f"applied {file} as revision {revision}")


@config_app.command("show")
def show(revision: Annotated[int | None, typer.Option(help="an earlier revision")] = None) -> None:
    """Print the applied configuration (or an earlier revision)."""

    async def find(store: ConfigStore) -> str | None:
        if revision is None:
            current = await store.current()
            return current.text if current else None
        return next((r.text for r in await store.history() if r.number == revision), None)

    text = _with_store(find)
    if text is None:
        typer.secho("no such configuration revision", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    typer.echo(text, nl=False)


@config_app.command("diff")
def diff(file: Path) -> None:
    """What applying `file` would change, as a unified diff against the applied revision."""
    new = _read(file)
    current = _with_store(lambda store: store.current())
    typer.echo(_unified(current.text if current else "", new, current, str(file)) or "no changes", nl=False)


@config_app.command("history")
def history() -> None:
    """Applied revisions, oldest first."""
    for revision in _with_store(lambda store: store.history()):
        typer.echo(f"revision {revision.number}  {revision.created or ''}")
