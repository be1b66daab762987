"""``lookalike db``: schema migrations."""

from __future__ import annotations

import click
from alembic import command
from sqlalchemy.engine import make_url

from cli.context import CliContext
from migrations import alembic_config


@click.group()
def db() -> None:
    """Database schema management."""


@db.command()
@click.argument("revision", default="head")
@click.pass_obj
def upgrade(ctx: CliContext, revision: str) -> None:
    """Migrate the database to REVISION (default: the newest)."""
    url = ctx.settings.resolved_database_url
    command.upgrade(alembic_config(url), revision)
    click.echo(f"database at revision {revision}: {_redact(url)}")


@db.command()
@click.pass_obj
def current(ctx: CliContext) -> None:
    """Show the database's current revision."""
    command.current(alembic_config(ctx.settings.resolved_database_url), verbose=False)


def _redact(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)
