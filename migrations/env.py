"""Alembic environment: the URL comes from core settings (or an explicit option); no Flask."""

from __future__ import annotations

from alembic import context

from core.config import Settings
from core.db import Base, make_engine
from core.db.backend import Backend, backend_of
from core.logs import configure_logging

config = context.config
if config.config_file_name is not None:
    # Alembic's own command line (`alembic upgrade head`, the stack's and compose's migrate
    # step): log like the lookalike command does (core/logs.py). Called from the project's
    # code (``migrations.alembic_config``, no file), the caller has configured logging.
    configure_logging(Settings.from_env())
url = config.get_main_option("sqlalchemy.url") or Settings.from_env().resolved_database_url
target_metadata = Base.metadata


def run_offline() -> None:
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True,
                      render_as_batch=url.startswith("sqlite"))
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            _run(conn)
    finally:
        engine.dispose()


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        # SQLite cannot ALTER most things; batch mode rebuilds tables instead.
        render_as_batch=backend_of(connection) is Backend.SQLITE,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
