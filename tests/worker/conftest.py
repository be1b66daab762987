"""Fixtures for the worker tests: embedded-mode flows, and a real Redis + Celery worker stack."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from alembic import command
from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from core.config import LogLevel, Settings
from core.db import make_engine, make_session_factory
from migrations import alembic_config
from tests.support.servers import ObjectStoreServer, PostgresServer, RedisServer
from tests.worker.support import WorkerProcess
from worker.celery_app import CeleryTaskSender, make_celery
from worker.local import InProcessDispatcher


def tuned(settings: Settings) -> Settings:
    """Small, fast and deterministic enough for tests on two shared cores. Retrains train the
    config as given: the recipe search has tests of its own (test_retrain_search.py)."""
    return settings.replace(annoy_trees=20, verify_sample_size=200, torch_threads=1, embed_batch_size=64,
                            retrain_search="off")


def store_hosts_settings(postgres: PostgresServer, redis_server: RedisServer, store: ObjectStoreServer, *,
                         name: str, redis_db: int, **overrides: object) -> Settings:
    """What hosts that share only PostgreSQL, Redis and the object store have in common (each
    adds its own home): a fresh database and broker db, a fresh store prefix, nothing
    scheduled or rebuilt on its own (the test's steps decide when)."""
    url = postgres.create_database(f"{name.replace('-', '')[:8]}{uuid.uuid4().hex[:12]}")
    broker = redis_server.url.rsplit("/", 1)[0] + f"/{redis_db}"
    redis.Redis.from_url(broker).flushdb()
    return tuned(Settings(
        database_url=url, broker_url=broker, log_level=LogLevel.INFO,
        artifact_store=f"s3://{store.bucket}/{name}-{uuid.uuid4().hex[:8]}",
        s3_endpoint_url=store.endpoint_url, s3_access_key_id="test", s3_secret_access_key="test",
        fresh_rebuild_threshold=1_000_000, reindex_cron="", retrain_cron="",
    ).replace(**overrides))


@dataclass
class Embedded:
    settings: Settings
    sessions: sessionmaker[Session]
    dispatcher: InProcessDispatcher


@pytest.fixture
def embedded(any_db_settings: Settings, sessions: sessionmaker[Session]) -> Iterator[Embedded]:
    """The in-process setup on a migrated SQLite or PostgreSQL database."""
    settings = tuned(any_db_settings)
    dispatcher = InProcessDispatcher(settings)
    yield Embedded(settings, sessions, dispatcher)
    dispatcher.close()


@dataclass
class CeleryStack:
    settings: Settings
    sessions: sessionmaker[Session]
    app: Celery
    dispatcher: CeleryTaskSender
    worker: WorkerProcess


_redis_dbs = itertools.cycle(range(1, 16))


@pytest.fixture
def celery_stack(request: pytest.FixtureRequest, tmp_path: Path, postgres_server: PostgresServer,
                 redis_server: RedisServer) -> Iterator[CeleryStack]:
    """PostgreSQL + Redis + one `lookalike worker` process (prefork, one child) on loopback.

    Parametrise it indirectly with a dict of settings overrides for the worker.
    """
    url = postgres_server.create_database(f"w{uuid.uuid4().hex[:12]}")
    broker = redis_server.url.rsplit("/", 1)[0] + f"/{next(_redis_dbs)}"
    settings = tuned(Settings(home=tmp_path / "home", database_url=url, broker_url=broker, log_level=LogLevel.INFO))
    settings = settings.replace(**getattr(request, "param", {}))
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    client = redis.Redis.from_url(broker)
    client.flushdb()
    client.close()
    worker.launch()  # it imports torch while we migrate; it touches SQL only when a task comes
    command.upgrade(alembic_config(url), "head")
    engine = make_engine(settings)
    app = make_celery(settings)
    worker.wait_ready()
    stack = CeleryStack(settings, make_session_factory(engine), app, CeleryTaskSender(app), worker)
    try:
        yield stack
    finally:
        worker.stop()
        app.close()
        engine.dispose()
