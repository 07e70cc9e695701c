"""`modelbus keys create|list|revoke` (run-time keys in NATS KV) and `keys new` (for the config file)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from dispatcher.bus.bus_settings import BusSettings
from dispatcher.bus.connection import connect
from dispatcher.bus.subjects import Subjects
from dispatcher.config.config_file import load_config, parse_config
from dispatcher.config.config_store import ConfigStore
from dispatcher.errors import KeyExists, KeyNotFound
from dispatcher.policy.api_keys import KeyRegistry, config_key_ids, hash_key, new_key
from modelbus.cli_audit import audit_action
from schemas.config import ModelbusConfig
from schemas.keys import ApiKeyView

keys_app = typer.Typer(help="API keys: create, list, revoke.", no_args_is_help=True)
T = TypeVar("T")
Audit = Callable[[str, dict[str, Any]], Awaitable[None]]
_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _duration(text: str) -> timedelta:
    found = _DURATION.match(text.strip())
    if not found:
        raise typer.BadParameter("use a number and a unit: 90s, 30m, 12h, 30d, 2w")
    return timedelta(seconds=int(found.group(1)) * _UNITS[found.group(2)])


def _with_registry(work: Callable[[KeyRegistry, ConfigStore, Audit], Awaitable[T]]) -> T:
    async def main() -> T:
        settings = BusSettings()
        subjects = Subjects(settings.namespace)
        nc = await connect(settings, name="modelbus-keys")
        try:
            js = nc.jetstream()
            registry = await KeyRegistry.open(js, subjects, settings)

            async def audit(action: str, target: dict[str, Any]) -> None:
                await audit_action(nc, subjects, action, target)

            return await work(registry, await ConfigStore.open(js, subjects, settings), audit)
        finally:
            await nc.close()

    return asyncio.run(main())


async def _config(store: ConfigStore) -> ModelbusConfig:
    """The applied configuration, else the bootstrap file every process starts from."""
    current = await store.current()
    if current is not None:
        return parse_config(current.text, f"config revision {current.number}")
    return load_config(BusSettings().config)


def _fail(message: str) -> typer.Exit:
    typer.secho(f"modelbus: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(1)


@keys_app.command("create")
def create(
    consumer: Annotated[str, typer.Option("--consumer", "-c", help="consumer in the applied config")],
    key_id: Annotated[str | None, typer.Option("--id", help="public key id (default: random)")] = None,
    expires_in: Annotated[str | None, typer.Option("--expires-in", help="e.g. 30d; default: never")] = None,
    description: Annotated[str, typer.Option("--description")] = "",
) -> None:
    """Issue a key now; every ingress accepts it within moments. The key is printed once."""
    expiry = _duration(expires_in) if expires_in else None

    async def work(registry: KeyRegistry, store: ConfigStore, audit: Audit) -> None:
        config = await _config(store)
        if config.consumer(consumer) is None:
            raise _fail(f"no consumer {consumer!r} in the configuration")
        try:
            record, key = await registry.create(consumer, key_id, expiry, description, config=config)
        except KeyExists:
            raise _fail(f"a key with id {key_id!r} exists (ids are never reused)") from None
        await audit("keys.create", {"key_id": record.id, "consumer": consumer})
        typer.echo(f"key (shown once, store it now): {key}")
        typer.echo(f"id: {record.id}  consumer: {record.consumer}  expires: {record.expires_at or 'never'}")

    _with_registry(work)


@keys_app.command("list")
def list_keys(consumer: Annotated[str | None, typer.Option("--consumer", "-c")] = None) -> None:
    """Issued keys and their status (never the keys or their hashes)."""

    async def work(registry: KeyRegistry, _: ConfigStore, __: Audit) -> None:
        table = Table("id", "consumer", "status", "created", "expires", "description")
        for record in await registry.list():
            if consumer in (None, record.consumer):
                view = ApiKeyView.of(record)
                table.add_row(
                    view.id,
                    view.consumer,
                    view.status,
                    f"{view.created_at:%Y-%m-%d %H:%M}",
                    f"{view.expires_at:%Y-%m-%d %H:%M}" if view.expires_at else "never",
                    view.description,
                )
        Console().print(table)

    _with_registry(work)


@keys_app.command("revoke")
def revoke(key_id: Annotated[str, typer.Argument(help="the key's id")]) -> None:
    """Revoke a key: every ingress refuses it within moments (watched, not polled)."""

    async def work(registry: KeyRegistry, store: ConfigStore, audit: Audit) -> None:
        if key_id in config_key_ids(await _config(store)):
            raise _fail(f"the key {key_id!r} is defined in the configuration: remove it there and apply it")
        try:
            record = await registry.revoke(key_id)
        except KeyNotFound:
            raise _fail(f"no key with id {key_id!r}") from None
        await audit("keys.revoke", {"key_id": record.id, "consumer": record.consumer})
        typer.echo(f"revoked {record.id} (consumer {record.consumer}) at {record.revoked_at}")

    _with_registry(work)


@keys_app.command("new")
def keys_new(key_id: Annotated[str, typer.Option("--id", help="public key id")] = "key-1") -> None:
    """Generate a key for the config file (offline); prints it once, and the entry with its hash."""
    key = new_key()
    typer.echo(f"key (shown once): {key}")
    typer.echo(f'config entry:     {{id: {key_id}, hash: "{hash_key(key)}"}}')
