"""`modelbus audit …` and `modelbus db …`: the audit ledger from the command line."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from dispatcher.bus.bus_settings import BusSettings
from modelbus.console import console

if TYPE_CHECKING:
    from dispatcher.audit.ledger import AuditStore

# SQLAlchemy and alembic are imported by the commands that use them: every `modelbus` process
# (workers included) imports this module, and they cost a third of a second to load.

audit_app = typer.Typer(help="Query and verify the audit trail.", no_args_is_help=True)
db_app = typer.Typer(help="The database.", no_args_is_help=True)
T = TypeVar("T")


def _database_url() -> str:
    url = BusSettings().database_url
    if not url:
        typer.secho("modelbus: set MODELBUS_DATABASE_URL (postgresql://…)", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    return url


def _with_store(work: Callable[[AuditStore], Awaitable[T]]) -> T:
    from dispatcher.audit.ledger import AuditStore
    from dispatcher.store.database import create_engine

    async def main() -> T:
        engine = create_engine(_database_url(), pool_size=1)
        try:
            return await work(AuditStore(engine))
        finally:
            await engine.dispose()

    return asyncio.run(main())


def _when(value: str | None) -> datetime | None:
    if value is None:
        return None
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _print(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, ensure_ascii=False, default=str))


@db_app.command("upgrade")
def db_upgrade() -> None:
    from dispatcher.store.migrate import upgrade

    """Apply schema migrations (also done by the dispatcher at start-up)."""
    upgrade(_database_url())
    typer.echo("database schema is up to date")


@audit_app.command("query")
def audit_query(
    model: Annotated[str | None, typer.Option(help="model served")] = None,
    version: Annotated[str | None, typer.Option()] = None,
    consumer: Annotated[str | None, typer.Option()] = None,
    status: Annotated[str | None, typer.Option(help="served | failed | rejected | cancelled")] = None,
    since: Annotated[str | None, typer.Option(help="ISO date or time, UTC if no zone")] = None,
    until: Annotated[str | None, typer.Option(help="ISO date or time (exclusive)")] = None,
    on: Annotated[str | None, typer.Option(help="one whole day, e.g. 2026-11-24")] = None,
    text: Annotated[str | None, typer.Option(help="substring anywhere in the record")] = None,
    limit: Annotated[int, typer.Option()] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="the full records, for tools")] = False,
) -> None:
    """Audit records, newest first, as a table (answers shortened). E.g. what model X told consumer Y
    on day Z."""
    start, end = _when(since), _when(until)
    if on is not None:
        start = _when(on)
        assert start is not None
        end = start + timedelta(days=1)
    from dispatcher.audit.ledger import AuditFilter

    where = AuditFilter(model, version, consumer, status, start, end, text, limit)
    records = _with_store(lambda store: store.query(where))
    if as_json:
        _print(records)
        return
    from modelbus.audit_view import query_table

    console().print(query_table(records))


@audit_app.command("compare")
def audit_compare(
    model: Annotated[str, typer.Option()],
    old: Annotated[str, typer.Option(help="the earlier version")],
    new: Annotated[str, typer.Option(help="the later version")],
    limit: Annotated[int, typer.Option(help="prompt pairs to show, the most changed first")] = 50,
    semantic: Annotated[
        str | None, typer.Option(help="also compare meaning, with this embeddings model (through the bus)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="the full report, for tools")] = False,
) -> None:
    """How a model's output changed between two versions: per version requests, tokens, latency,
    errors and finish reasons; then the prompts both answered, ranked by how much the answer changed."""
    report = _with_store(lambda store: store.compare_versions(model, old, new, limit))
    meaning = None
    if semantic is not None:
        from modelbus.audit_view import meaning_similarity

        try:
            meaning = asyncio.run(meaning_similarity(semantic, report["pairs"], old, new))
        except LookupError as exc:
            typer.secho(f"modelbus: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None
        for pair, score in zip(report["pairs"], meaning, strict=True):
            pair["meaning_similarity"] = round(score, 4)
    if as_json:
        _print(report)
        return
    from modelbus.audit_view import compare_view

    console().print(compare_view(report, old, new, meaning))


@audit_app.command("verify")
def audit_verify() -> None:
    """Check the hash chain, and the table against the signed heads kept in NATS (needs
    MODELBUS_AUDIT_VERIFY_KEY and MODELBUS_NATS_URL); exits 1 and lists each edited, removed,
    reordered or truncated row."""

    async def work(store: AuditStore) -> tuple[int, list[Any], str | None]:
        from dispatcher.audit.checkpoints import NOT_CHECKED, against_checkpoints, public_key
        from dispatcher.bus.connection import connect
        from dispatcher.bus.subjects import Subjects

        checked, problems = await store.verify()
        settings = BusSettings()
        public = public_key(settings)
        if public is None:
            return checked, list(problems), NOT_CHECKED
        nc = await connect(settings, name="modelbus-audit-verify")
        try:
            found = await against_checkpoints(store, nc.jetstream(), Subjects(settings.namespace), public)
        finally:
            await nc.close()
        return checked, [*problems, *found], None

    checked, problems, note = _with_store(work)
    for problem in problems:
        typer.secho(str(problem), fg=typer.colors.RED)
    if note:
        typer.secho(note, fg=typer.colors.YELLOW, err=True)
    typer.echo(f"{checked} rows checked, {len(problems)} problems")
    if problems:
        raise typer.Exit(1)


@audit_app.command("retention")
def audit_retention(
    keep_days: Annotated[int, typer.Option(help="keep at least this many days")] = 365,
) -> None:
    """Drop whole monthly partitions older than the retention period, recording each removal."""
    cutoff = datetime.now(UTC) - timedelta(days=keep_days)
    removed = _with_store(lambda store: store.remove_partitions_before(cutoff))
    _print(removed)
