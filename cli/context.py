"""What every subcommand needs: settings, and lazily an engine and a session factory."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import click
from alembic import command
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from core.config import Settings
from core.db import make_engine, make_session_factory
from core.db.backend import Backend, backend_of
from migrations import alembic_config


@dataclass
class CliContext:
    settings: Settings

    @classmethod
    def from_env(cls) -> CliContext:
        return cls(Settings.from_env())

    @cached_property
    def engine(self) -> Engine:
        engine = make_engine(self.settings)
        ensure_schema(engine, self.settings.resolved_database_url)
        return engine

    @cached_property
    def sessions(self) -> sessionmaker[Session]:
        return make_session_factory(self.engine)


def ensure_schema(engine: Engine, url: str) -> None:
    """Bring the embedded SQLite database to the newest schema; insist on it elsewhere.

    The embedded setup should just work on a fresh directory, so SQLite is migrated
    on first use. A shared PostgreSQL is migrated deliberately (``lookalike db
    upgrade``, the compose ``migrate`` job), so here we only check and explain.
    """
    config = alembic_config(url)
    head = ScriptDirectory.from_config(config).get_current_head()
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    if current == head:
        return
    if backend_of(engine) is Backend.SQLITE:
        command.upgrade(config, "head")
        return
    raise click.ClickException(
        f"database schema is at {current or 'nothing'}, code expects {head}: run `lookalike db upgrade`"
    )
