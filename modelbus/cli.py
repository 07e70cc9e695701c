"""The `modelbus` command line."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Annotated, Any

import typer

from dispatcher.bus.bus_settings import BusSettings
from dispatcher.config.config_file import load_config
from dispatcher.errors import ConfigError
from modelbus.audit_cli import audit_app, db_app
from modelbus.config_cli import config_app
from modelbus.keys_cli import keys_app
from modelbus.nats_config_cli import nats_config

app = typer.Typer(help="Modelbus: an on-premises AI gateway over NATS JetStream.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(audit_app, name="audit")
app.add_typer(db_app, name="db")
app.add_typer(config_app, name="config")
app.command("nats-config")(nats_config)

# Commands that run a part of the stack take their addresses from their environment only; the
# others (operator commands) find a running `modelbus up` by themselves.
_PROCESS_COMMANDS = {"up", "ingress", "worker", "dispatcher", "simulator"}


@app.callback()
def _main(ctx: typer.Context) -> None:
    if ctx.invoked_subcommand not in _PROCESS_COMMANDS:
        from modelbus import up_record

        up_record.adopt(os.environ)


def _logging(level: str, settings: BusSettings) -> None:
    from dispatcher.telemetry.logs import configure_logging

    configure_logging(level, settings.log_format)


def _fail(message: str) -> typer.Exit:
    typer.secho(f"modelbus: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(2)


@app.command()
def up(
    port: Annotated[int, typer.Option(help="ingress port")] = 8080,
    host: Annotated[str, typer.Option(help="ingress address")] = "127.0.0.1",
    config: Annotated[Path | None, typer.Option(help="config file; default: two simulated models")] = None,
    data_dir: Annotated[Path, typer.Option(help="where embedded NATS keeps its data")] = Path(".modelbus"),
) -> None:
    """Start the whole stack: embedded NATS and Postgres (unless MODELBUS_NATS_URL / MODELBUS_DATABASE_URL
    are set), the dispatcher, workers and the ingress."""
    from modelbus import up_record
    from modelbus.stack import Stack

    stack = Stack(
        data_dir, host, port, config or _env_path("MODELBUS_CONFIG"), os.environ.get("MODELBUS_NATS_URL")
    )
    try:
        cfg, key, config_path = stack.prepare()
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    stopping: list[bool] = []

    def on_signal(signum: int, _frame: object) -> None:
        stopping.append(True)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        nats_url = stack.start_nats()
        try:
            in_force = stack.store_configuration(config_path, nats_url)
        except ConfigError as exc:
            raise _fail(str(exc)) from None
        database_url = stack.start_database()
        stack.launch(cfg, config_path, nats_url, database_url)
        if not stack.wait_ready():
            raise _fail(f"the ingress did not become ready; see {data_dir / 'logs'}")
        base = f"http://{host}:{port}/v1"
        typer.echo(f"Modelbus is up.\n  base URL: {base}\n  NATS:     {nats_url}\n  database: {database_url}")
        typer.echo(f"  audit:    MODELBUS_AUDIT_VERIFY_KEY={stack.audit_verify_key} modelbus audit verify")
        typer.echo(
            f"  metrics:  curl -H 'Authorization: Bearer {stack.metrics_token}' {base.removesuffix('/v1')}/metrics"
        )
        typer.echo(f"  models:   {', '.join(m.name for m in cfg.models) or '(none)'}")
        if not os.environ.get("MODELBUS_WEBHOOK_SECRET"):
            typer.echo(f"  webhooks: signed with the secret in {stack.webhook_secret_path}")
        typer.echo(f"  config:   {in_force}")
        if key:
            typer.echo(f"  API key:  {key}")
        # Operator commands in another shell find this stack through the record (modelbus/up_record.py).
        up_record.publish(base, nats_url, database_url, stack.audit_verify_key)
        typer.echo(f"  watch:    modelbus top   (or {base.removesuffix('/v1')}/ops)")
        typer.echo(f"  logs:     {data_dir / 'logs'}\nCtrl-C stops it.")
        stack.supervise(stopping)
    finally:
        up_record.withdraw()
        stack.shutdown()


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


@app.command()
def ingress(
    host: Annotated[str | None, typer.Option()] = None,
    port: Annotated[int | None, typer.Option()] = None,
    log_level: Annotated[str, typer.Option()] = "info",
    tls_cert: Annotated[Path | None, typer.Option(help="serve HTTPS with this certificate (PEM)")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="private key of --tls-cert")] = None,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            envvar="MODELBUS_INGRESS_WORKERS",
            help="ingress processes sharing the port (SO_REUSEPORT): one per core to use",
        ),
    ] = 1,
    reuse_port: Annotated[bool, typer.Option(hidden=True)] = False,
) -> None:
    """Run the ingress (HTTP API): one process, or --workers N. Settings come from MODELBUS_* variables."""
    import uvicorn

    from ingress.app import create_edge
    from ingress.http_limits import limited_protocol
    from ingress.ingress_settings import IngressSettings
    from modelbus.processes import listen_reuse_port, run_copies

    given = {"host": host, "port": port, "tls_cert": tls_cert, "tls_key": tls_key}
    overrides = {k: v for k, v in given.items() if v is not None}
    settings = IngressSettings(**overrides)  # type: ignore[arg-type]
    if workers > 1:
        if settings.nats_user is not None:
            # Each process needs its own id, and a restricted NATS user is issued for one id.
            raise _fail("--workers needs one NATS user per ingress id: run one `modelbus ingress` per id")
        argv = ["ingress", "--workers", "1", "--reuse-port", "--log-level", log_level]
        argv += ["--host", settings.host, "--port", str(settings.port)]
        if settings.tls_cert is not None and settings.tls_key is not None:
            argv += ["--tls-cert", str(settings.tls_cert), "--tls-key", str(settings.tls_key)]
        envs = []
        for n in range(workers):
            env = {**os.environ, "MODELBUS_INGRESS_ID": f"{settings.ingress_id}-{n}"}
            if settings.ingress_metrics_port is not None:
                env["MODELBUS_INGRESS_METRICS_PORT"] = str(settings.ingress_metrics_port + n)
            envs.append(env)
        raise typer.Exit(run_copies(argv, envs))
    # One of several copies: bind the port beside the others (the kernel spreads connections), and
    # first, so that a port in use fails the copy at once.
    sockets = [listen_reuse_port(settings.host, settings.port)] if reuse_port else None
    _logging(log_level, settings)
    try:
        application = create_edge(settings)
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    config = uvicorn.Config(
        application,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        # httptools with the head size, head and body timeouts and connection cap uvicorn lacks.
        http=limited_protocol(settings.http_limits()),
        log_level="warning",
        access_log=False,
        # Generations last minutes: only idle keep-alive connections are closed early.
        timeout_keep_alive=settings.keep_alive_timeout_s,
        timeout_graceful_shutdown=30,
        # With a certificate the port speaks only TLS: plain HTTP is never served on it.
        ssl_certfile=settings.tls_cert,
        ssl_keyfile=settings.tls_key,
    )
    uvicorn.Server(config).run(sockets=sockets)


@app.command()
def worker(
    model: Annotated[str, typer.Option(help="model name from the config")],
    version: Annotated[str, typer.Option(help="which of the model's versions")] = "default",
    max_concurrency: Annotated[int | None, typer.Option(help="override the config")] = None,
    log_level: Annotated[str, typer.Option()] = "info",
    processes: Annotated[
        int,
        typer.Option(
            min=1,
            help="worker processes sharing this worker's slots (max_concurrency split between them)",
        ),
    ] = 1,
) -> None:
    """Run a worker for one model: pulls requests by free capacity and calls the backend."""
    import uvloop

    from modelbus.processes import run_copies
    from workers.worker_service import Worker
    from workers.worker_settings import WorkerSettings

    overrides: dict[str, object] = {"model": model, "version": version}
    if max_concurrency is not None:
        overrides["max_concurrency"] = max_concurrency
    settings = WorkerSettings(**overrides)  # type: ignore[arg-type]
    if processes > 1:
        if settings.nats_user is not None:
            raise _fail("--processes needs one NATS user per worker id: run one `modelbus worker` per id")
        argv = ["worker", "--model", model, "--version", version, "--log-level", log_level]
        if max_concurrency is not None:
            argv += ["--max-concurrency", str(max_concurrency)]
        envs = [
            {
                **os.environ,
                "MODELBUS_WORKER_ID": f"{settings.worker_id}-{n}",
                "MODELBUS_CAPACITY_PARTS": str(processes),
                "MODELBUS_CAPACITY_PART": str(n),
            }
            for n in range(processes)
        ]
        raise typer.Exit(run_copies(argv, envs))
    _logging(log_level, settings)
    try:
        bootstrap = load_config(settings.config)
    except ConfigError as exc:
        raise _fail(str(exc)) from None

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        try:
            await Worker(settings, model, bootstrap).run(stop)
        except LookupError as exc:
            raise _fail(str(exc)) from None

    uvloop.run(main())


@app.command()
def dispatcher(log_level: Annotated[str, typer.Option()] = "info") -> None:
    """Run the dispatcher: keeps the topology in place and dead-letters exhausted requests."""
    import uvloop

    from dispatcher.process.dispatcher_service import run_dispatcher

    settings = BusSettings()
    _logging(log_level, settings)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await run_dispatcher(settings, load_config(settings.config), stop)

    uvloop.run(main())


@app.command()
def top(
    interval: Annotated[float, typer.Option(help="seconds between refreshes")] = 2.0,
    once: Annotated[bool, typer.Option("--once", help="print one frame and exit")] = False,
) -> None:
    """Live terminal view: per model queue depth and trend, workers, traffic, latency; per consumer usage."""
    from modelbus.top import run_top

    try:
        asyncio.run(run_top(interval, once))
    except KeyboardInterrupt:
        pass


@app.command()
def simulator(
    port: Annotated[int, typer.Option()] = 9000,
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    ttft_ms: Annotated[float, typer.Option()] = 20.0,
    tokens_per_s: Annotated[float, typer.Option()] = 200.0,
    default_max_tokens: Annotated[int, typer.Option()] = 16,
    capacity: Annotated[int, typer.Option()] = 8,
    error_rate: Annotated[float, typer.Option()] = 0.0,
    embedding_latency_ms: Annotated[float, typer.Option()] = 2.0,
) -> None:
    """Serve the model backend simulator over an OpenAI-compatible HTTP API."""
    import uvicorn

    from schemas.config import SimulatorBackend
    from simulator.server import create_app

    config = SimulatorBackend(
        ttft_ms=ttft_ms,
        tokens_per_s=tokens_per_s,
        default_max_tokens=default_max_tokens,
        capacity=capacity,
        error_rate=error_rate,
        embedding_latency_ms=embedding_latency_ms,
    )
    uvicorn.run(
        create_app(config),
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )


@app.command()
def capacity(
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Per model and version: live workers, free slots, queue depth, estimated wait."""
    from rich.console import Console
    from rich.table import Table

    from dispatcher.bus.connection import connect
    from dispatcher.bus.subjects import Subjects
    from dispatcher.config.config_store import ConfigStore, load_initial
    from dispatcher.scheduling.capacity_view import capacity_view, open_registry

    settings = BusSettings()

    async def main() -> list[Any]:
        nc = await connect(settings, name="modelbus-capacity")
        try:
            js, subjects = nc.jetstream(), Subjects(settings.namespace)
            store = await ConfigStore.open(js, subjects, settings)
            config, _ = await load_initial(store, load_config(settings.config))
            return await capacity_view(js, subjects, await open_registry(js, subjects, settings), config)
        finally:
            await nc.close()

    rows = asyncio.run(main())
    if as_json:
        typer.echo(json.dumps([row.model_dump() for row in rows], indent=2))
        return
    table = Table(
        "model", "version", "workers", "free / capacity", "queued", "in flight", "redelivered", "est. wait"
    )
    for row in rows:
        wait = "no workers" if row.estimated_wait_s is None else f"{row.estimated_wait_s:.2f} s"
        table.add_row(
            row.model,
            row.version,
            str(row.workers),
            f"{row.free_slots} / {row.capacity}",
            str(row.queued),
            str(row.in_flight),
            str(row.redelivered),
            wait,
        )
    Console().print(table)


if __name__ == "__main__":
    app()
