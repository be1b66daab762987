"""Alembic migrations; :func:`alembic_config` locates them for ``lookalike db``."""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).resolve().parent


def alembic_config(database_url: str) -> Config:
    """An Alembic config for this project's migrations against ``database_url``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # '%' is Alembic's interpolation character; URLs may contain it (passwords).
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config
