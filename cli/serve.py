"""``lookalike serve`` (the API under gunicorn) and ``lookalike keys`` (API keys).

``serve`` replaces the CLI process with gunicorn (``os.execv``), configured by
``service/gunicorn_conf.py``; each gunicorn worker then calls :func:`wsgi_app`,
which builds the app from the environment. In the embedded setup (no broker) the
jobs the API starts run in a background thread of the worker that received the
request (the worker package's in-process dispatcher); with a broker they go to
Celery.
"""

from __future__ import annotations

import importlib
import os
import sys

import click
from flask import Flask

from cli.context import CliContext
from core.config import Settings
from service.apikeys import ApiKeyError, create_key, list_keys, revoke_key
from service.app import create_app


def wsgi_app() -> Flask:
    """The app for one gunicorn worker (``cli.serve:wsgi_app()``), settings from the environment.

    The worker package (and the trainer it brings along) is imported only in the
    embedded setup, where this process runs the jobs; an API worker in broker mode
    never loads it, which keeps its private memory small.
    """
    settings = Settings.from_env()
    if not settings.embedded:
        return create_app(settings)
    local = importlib.import_module("worker.local")
    return create_app(settings, dispatcher=local.InProcessDispatcher(settings, background=True))


def gunicorn_argv(*, bind: str, workers: int, timeout: int | None) -> list[str]:
    argv = [sys.executable, "-m", "gunicorn", "-c", "python:service.gunicorn_conf",
            "--bind", bind, "--workers", str(workers)]
    if timeout is not None:
        argv += ["--timeout", str(timeout)]
    return [*argv, "cli.serve:wsgi_app()"]


@click.command()
@click.option("--bind", "-b", default="127.0.0.1:8000", show_default=True, help="host:port to listen on.")
@click.option("--workers", "-w", default=2, show_default=True, type=click.IntRange(1, 64),
              help="gunicorn worker processes (each maps the same index file).")
@click.option("--timeout", type=click.IntRange(5, 3600), default=None, help="Worker timeout in seconds (default 60).")
@click.pass_obj
def serve(ctx: CliContext, bind: str, workers: int, timeout: int | None) -> None:
    """Serve the API and the web UI under gunicorn."""
    # Touching the engine migrates an embedded SQLite database (or checks PostgreSQL's
    # schema) once, here, instead of in every worker at the same time.
    ctx.engine.dispose()
    mode = "embedded (jobs run in the API process)" if ctx.settings.embedded else "broker (jobs go to Celery)"
    click.echo(f"serving on http://{bind} with {workers} workers, {mode}", err=True)
    exec_gunicorn(ctx.settings, bind=bind, workers=workers, timeout=timeout)


def exec_gunicorn(settings: Settings, *, bind: str, workers: int, timeout: int | None = None) -> None:
    """Replace this process with gunicorn serving the app (it never returns).

    Its environment carries ``settings`` (``to_env``), so what the command line changed
    (``lookalike --verbose``) holds in the master and the workers too.
    """
    argv = gunicorn_argv(bind=bind, workers=workers, timeout=timeout)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(argv[0], argv, {**os.environ, **settings.to_env()})


@click.group()
def keys() -> None:
    """API keys for writes and admin operations (stored hashed)."""


@keys.command("create")
@click.argument("name")
@click.pass_obj
def keys_create(ctx: CliContext, name: str) -> None:
    """Create a key called NAME and print it (the only time it is shown)."""
    try:
        key, info = create_key(ctx.sessions, name)
    except ApiKeyError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"created key {info.name!r} ({info.prefix}...); store it now, it is not shown again:", err=True)
    click.echo(key)


@keys.command("list")
@click.pass_obj
def keys_list(ctx: CliContext) -> None:
    """List keys (name, prefix, created, revoked); never the keys themselves."""
    for info in list_keys(ctx.sessions):
        revoked = info.revoked_at.isoformat(timespec="seconds") if info.revoked_at else "-"
        click.echo(f"{info.name}\t{info.prefix}\tcreated {info.created_at.isoformat(timespec='seconds')}"
                   f"\trevoked {revoked}")


@keys.command("revoke")
@click.argument("name")
@click.pass_obj
def keys_revoke(ctx: CliContext, name: str) -> None:
    """Revoke the key called NAME (it stops working within 10 seconds)."""
    try:
        info = revoke_key(ctx.sessions, name)
    except ApiKeyError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"revoked key {info.name!r} ({info.prefix}...)")
