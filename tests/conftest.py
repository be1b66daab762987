"""Fixtures shared by every test package: settings in a temp dir, SQL, servers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from core.config import Settings
from core.db import make_engine, make_session_factory
from migrations import alembic_config
from tests.support.servers import ObjectStoreServer, PostgresServer, RedisServer

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer.start()
    yield server
    server.close()


@pytest.fixture(scope="session")
def object_store_server() -> Iterator[ObjectStoreServer]:
    server = ObjectStoreServer.start()
    yield server
    server.close()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Embedded-mode settings with everything under a fresh temp dir."""
    return Settings(home=tmp_path / "home")


def _migrated(url: str) -> Engine:
    command.upgrade(alembic_config(url), "head")
    return make_engine(url)


_pg_db_counter = iter(range(10**6))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def any_db_settings(request: pytest.FixtureRequest, settings: Settings) -> Settings:
    """Settings whose database is a migrated SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        url = settings.resolved_database_url
    else:
        server: PostgresServer = request.getfixturevalue("postgres_server")
        url = server.create_database(f"t{next(_pg_db_counter)}")
    return settings.replace(database_url=url)


@pytest.fixture
def engine(any_db_settings: Settings) -> Iterator[Engine]:
    eng = _migrated(any_db_settings.resolved_database_url)
    yield eng
    eng.dispose()


@pytest.fixture
def sqlite_engine(settings: Settings) -> Iterator[Engine]:
    eng = _migrated(settings.resolved_database_url)
    yield eng
    eng.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return make_session_factory(engine)


@pytest.fixture(scope="session")
def fashion_mnist_dir() -> Path:
    if not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.fail("dataset-fashion-mnist is not installed (make test installs it)")
    return FASHION_MNIST_DIR
