"""`modelbus config validate|test|apply|show|diff|history`: configuration as code, stored in NATS KV.

`apply` runs the assertions written beside the file (`<name>.tests.yaml`, or `--tests`) and refuses
on a failure; it refuses a change that weakens policy (dispatcher/config/config_weakening.py) unless told
`--confirm-weakening`; and it stores the new revision only if the running one is still the one it
compared against. Every apply leaves an audit row with who applied what, the diff, the weakenings
confirmed and the assertions that held."""

from __future__ import annotations

import asyncio
import difflib
import hashlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
import yaml
from pydantic import ValidationError

from dispatcher.bus.bus_settings import BusSettings
from dispatcher.bus.connection import connect, supports_msg_ttl
from dispatcher.bus.subjects import Subjects
from dispatcher.bus.topology import ensure_streams
from dispatcher.config.config_file import parse_config
from dispatcher.config.config_store import ConfigStore, Revision
from dispatcher.config.config_weakening import weakenings
from dispatcher.errors import ConfigError
from dispatcher.policy.api_keys import KeyRegistry, config_key_ids
from modelbus.cli_audit import audit_action
from schemas.config import ModelbusConfig
from schemas.config_tests import ConfigTests

if TYPE_CHECKING:
    from dispatcher.config.config_checks import Result

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


class Refusal(ConfigError):
    """`apply` would not store the revision: an assertion failed or the change weakens policy."""


async def apply_text(
    settings: BusSettings,
    text: str,
    source: str,
    *,
    first: bool = False,
    confirm_weakening: bool = False,
    held: list[str] | None = None,
) -> int | None:
    """Store a revision, unless it gives a key an id an issued key has, or weakens policy without
    `confirm_weakening`; audited with the diff. `held`: the assertions it passed, for the audit row.

    `first`: only if nothing is applied yet (`modelbus up`); returns None when something was."""
    config = parse_config(text, source)
    subjects = Subjects(settings.namespace)
    nc = await connect(settings, name="modelbus-config")
    try:
        js = nc.jetstream()
        # The audit row below needs the audit stream, which a stack being started has not made yet.
        await ensure_streams(js, subjects, settings, nc.max_payload, supports_msg_ttl(nc))
        store = await ConfigStore.open(js, subjects, settings)
        issued = {record.id for record in await (await KeyRegistry.open(js, subjects, settings)).list()}
        clash = sorted(config_key_ids(config) & issued)
        if clash:
            raise ConfigError(
                f"{source}: key ids {clash} belong to issued keys (`modelbus keys list`); choose other ids"
            )
        current = await store.current()
        weakened = [] if first else weakenings(_parsed(current), config)
        if weakened and not confirm_weakening:
            lines = "\n".join(f"  WEAKENS {w}" for w in weakened)
            raise Refusal(
                f"{source} weakens policy; nothing applied (run again with --confirm-weakening if meant):\n{lines}"
            )
        if first:
            revision = await store.apply_first(text, source)
        else:
            revision = await store.apply(text, source, after=current.number if current else 0)
        if revision is None:
            return None
        old = current.text if current is not None else ""
        target = {
            "revision": revision,
            "previous": current.number if current is not None else None,
            "source": source,
            "sha256": hashlib.sha256(text.encode()).hexdigest(),
            "diff": _unified(old, text, current, source),
            "weakenings_confirmed": [str(w) for w in weakened],
            "assertions_held": held or [],
        }
        await audit_action(nc, subjects, "config.apply", target)
        return revision
    finally:
        await nc.close()


def _parsed(revision: Revision | None) -> ModelbusConfig | None:
    if revision is None:
        return None
    try:
        return parse_config(revision.text, f"revision {revision.number}")
    except ConfigError:
        return None  # an unreadable running revision: every process kept the one before it


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


@config_app.command("test")
def test(
    file: Path,
    tests: Annotated[
        Path | None, typer.Option(help="assertions file; default: <file>.tests.yaml beside it")
    ] = None,
) -> None:
    """Run the assertions written beside a config file against it, without sending traffic."""
    text = _validated(file)
    found = _tests_file(file, tests)
    if found is None:
        typer.secho(
            f"modelbus: no assertions for {file} (looked for {_beside(file)})", fg=typer.colors.RED, err=True
        )
        raise typer.Exit(2)
    if not _report(_assertions(parse_config(text, str(file)), found)):
        raise typer.Exit(1)


@config_app.command("apply")
def apply(
    file: Path,
    tests: Annotated[
        Path | None, typer.Option(help="assertions file; default: <file>.tests.yaml beside it")
    ] = None,
    confirm_weakening: Annotated[
        bool, typer.Option("--confirm-weakening", help="apply although the change weakens policy")
    ] = False,
) -> None:
    """Validate, run the assertions, and store a new revision; every running process switches to it."""
    text = _validated(file)
    found = _tests_file(file, tests)
    held: list[str] = []
    if found is not None:
        results = _assertions(parse_config(text, str(file)), found)
        if not _report(results):
            typer.secho(f"{file}: assertions failed; nothing applied", fg=typer.colors.RED, err=True)
            raise typer.Exit(1)
        held = [r.assertion.label for r in results]
    else:
        typer.echo(f"no assertions beside {file} ({_beside(file)}); applying without")
    try:
        revision = asyncio.run(
            apply_text(BusSettings(), text, str(file), confirm_weakening=confirm_weakening, held=held)
        )
    except ConfigError as exc:
        typer.secho(str(exc), fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    typer.echo(f"applied {file} as revision {revision}")


def _beside(file: Path) -> Path:
    return file.with_name(f"{file.stem}.tests{file.suffix or '.yaml'}")


def _tests_file(file: Path, given: Path | None) -> Path | None:
    if given is not None:
        return given
    beside = _beside(file)
    return beside if beside.exists() else None


def _assertions(config: ModelbusConfig, path: Path) -> list[Result]:
    # Imported here: the assertions load the guardrails (0.2 s), which every `modelbus` process would
    # pay at start-up otherwise.
    from dispatcher.config.config_checks import run_assertions

    try:
        tests = ConfigTests.model_validate(yaml.safe_load(_read(path)) or {})
    except (yaml.YAMLError, ValidationError) as exc:
        typer.secho(f"{path}: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    return asyncio.run(run_assertions(config, tests))


def _report(results: list[Result]) -> bool:
    for result in results:
        mark = "PASS" if result.passed else "FAIL"
        colour = typer.colors.GREEN if result.passed else typer.colors.RED
        typer.secho(f"{mark}  {result.assertion.label}  ({result.detail})", fg=colour)
    failed = sum(not r.passed for r in results)
    typer.echo(f"{len(results) - failed} passed, {failed} failed")
    return failed == 0


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
    """What applying `file` would change: a unified diff against the applied revision, and every
    change that weakens policy (which `apply` refuses without --confirm-weakening)."""
    new = _validated(file)
    current = _with_store(lambda store: store.current())
    typer.echo(_unified(current.text if current else "", new, current, str(file)) or "no changes")
    weakened = weakenings(_parsed(current), parse_config(new, str(file)))
    if not weakened:
        typer.echo("policy: no change weakens it")
        return
    typer.secho(f"policy: {len(weakened)} changes weaken it", fg=typer.colors.YELLOW)
    for weakening in weakened:
        typer.secho(f"  WEAKENS {weakening}", fg=typer.colors.YELLOW)


@config_app.command("history")
def history() -> None:
    """Applied revisions, oldest first."""
    for revision in _with_store(lambda store: store.history()):
        typer.echo(f"revision {revision.number}  {revision.created or ''}")
