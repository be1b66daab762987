"""``lookalike stack``: the full stack (what docker-compose.yml runs) as native processes.

Runs in the foreground until Ctrl-C or SIGTERM, then stops every service in
reverse order. Logs: one file per service under ``<home>/stack/logs/``, and all
of them, prefixed with the service's name, on this terminal.
"""

from __future__ import annotations

import shlex
import signal
import threading
from types import FrameType

import click

from cli.context import CliContext
from stack import Stack, StackConfig, StackError

PORT = click.IntRange(1, 65535)


@click.command("stack")
@click.option("--api-port", type=PORT, default=StackConfig.api_port, show_default=True,
              help="The public port (nginx).")
@click.option("--gunicorn-port", type=PORT, default=StackConfig.gunicorn_port, show_default=True,
              help="gunicorn's internal loopback port, behind nginx.")
@click.option("--postgres-port", type=PORT, default=StackConfig.postgres_port, show_default=True)
@click.option("--redis-port", type=PORT, default=StackConfig.redis_port, show_default=True)
@click.option("--api-workers", type=click.IntRange(1, 64), default=StackConfig.api_workers, show_default=True)
@click.option("--worker-concurrency", type=click.IntRange(1, 64), default=StackConfig.worker_concurrency,
              show_default=True)
@click.option("--object-store/--no-object-store", default=False, show_default=True,
              help="Also run SeaweedFS and share images, checkpoints and indexes through it, as docker-compose does.")
@click.option("--object-store-port", type=PORT, default=StackConfig.object_store_port, show_default=True,
              help="SeaweedFS's S3 port (it also takes the next three, and each + 10000).")
@click.pass_obj
def stack(ctx: CliContext, api_port: int, gunicorn_port: int, postgres_port: int, redis_port: int, api_workers: int,
          worker_concurrency: int, object_store: bool, object_store_port: int) -> None:
    """PostgreSQL, Redis, migration, API behind nginx, worker and beat on loopback, until Ctrl-C."""
    if gunicorn_port == api_port:
        raise click.BadParameter("must differ from --api-port (nginx listens there)", param_hint="--gunicorn-port")
    config = StackConfig(home=ctx.settings.home, api_port=api_port, gunicorn_port=gunicorn_port,
                         postgres_port=postgres_port,
                         redis_port=redis_port, api_workers=api_workers, worker_concurrency=worker_concurrency,
                         object_store=object_store, object_store_port=object_store_port)
    supervisor = Stack(config, ctx.settings, console=click.echo)
    done = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        click.echo(f"stack: {signal.Signals(signum).name} received, stopping", err=True)
        done.set()

    # Installed before starting, so a Ctrl-C during start-up also stops cleanly.
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            supervisor.start()
        except StackError as exc:
            raise click.ClickException(str(exc)) from exc
        if not done.is_set():
            _print_summary(supervisor)
            done.wait()
    finally:
        supervisor.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    click.echo("stack: stopped", err=True)


def _print_summary(supervisor: Stack) -> None:
    config, settings = supervisor.config, supervisor.settings
    env = " ".join(f"{key}={shlex.quote(value)}" for key, value in settings.to_env().items()
                   if key in {"LOOKALIKE_HOME", "LOOKALIKE_DATABASE_URL", "LOOKALIKE_BROKER_URL",
                              "LOOKALIKE_ARTIFACT_STORE", "LOOKALIKE_S3_ENDPOINT_URL"} and value)
    lines = [
        "",
        f"stack: up. API {config.api_url}/api/v1 (OpenAPI: {config.api_url}/api/v1/openapi.json), "
        f"web UI {config.api_url}/",
        f"stack: logs in {config.log_dir}/ (one file per service); Ctrl-C stops everything",
        f"stack: the CLI against this stack: env {env} lookalike ...",
    ]
    if not settings.admin_api_key:
        lines.append("stack: writes need an API key: `lookalike keys create NAME` with the environment above")
    click.echo("\n".join(lines) + "\n", err=True)
