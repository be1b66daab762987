"""Hosts that share only PostgreSQL, Redis and an object store (a real SeaweedFS).

Host A and host C each run a real ``lookalike worker`` with its own home, artifacts
folder and cache; host B (here: the Flask app in this process, its own home too)
imports the catalog and serves. Nothing on disk is shared: what one host wrote,
another can only have got through the store.
"""

from __future__ import annotations

import itertools
import uuid
from pathlib import Path

import pytest
import redis
from alembic import command

from core.artifacts import open_store, published_versions
from core.config import LogLevel, Settings
from core.db import JobStatus, make_engine, make_session_factory
from core.index_store import INDEXES_PREFIX, version_prefix
from core.media import MEDIA_PREFIX
from core.registry import activate_model, active_index
from core.reindex_requests import submit_reindex
from migrations import alembic_config
from service.app import create_app
from tests.support.processes import cached_media
from tests.support.servers import ObjectStoreServer, PostgresServer, RedisServer
from tests.worker.conftest import tuned
from tests.worker.support import TINY_SPEC, WorkerProcess, import_fmnist, wait_for_job
from trainer.register import register_untrained
from worker.celery_app import CeleryTaskSender, make_celery

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.objectstore, pytest.mark.slow]
_prefixes = itertools.count()
CATALOG = 1500


def test_two_worker_hosts_share_the_embedding_and_a_third_serves_the_index(
        tmp_path: Path, postgres_server: PostgresServer, redis_server: RedisServer,
        object_store_server: ObjectStoreServer) -> None:
    url = postgres_server.create_database(f"h{uuid.uuid4().hex[:12]}")
    broker = redis_server.url.rsplit("/", 1)[0] + "/14"
    redis.Redis.from_url(broker).flushdb()
    shared = Settings(database_url=url, broker_url=broker, log_level=LogLevel.INFO,
                      artifact_store=f"s3://{object_store_server.bucket}/hosts-{next(_prefixes)}",
                      s3_endpoint_url=object_store_server.endpoint_url, s3_access_key_id="test",
                      s3_secret_access_key="test", admin_api_key="test-admin-key")
    host = {name: tuned(shared.replace(home=tmp_path / f"host-{name}")) for name in "abc"}
    workers = [WorkerProcess(host[name], tmp_path / f"worker-{name}.log") for name in "ac"]
    for w in workers:
        w.launch()
    command.upgrade(alembic_config(url), "head")
    engine = make_engine(host["b"])
    sessions = make_session_factory(engine)
    celery = make_celery(host["b"])
    try:
        for w in workers:
            w.wait_ready()
        # Host B: the model and the catalog; both go to the store before their rows commit.
        model = register_untrained(sessions, host["b"], TINY_SPEC, version="m-hosts")
        activate_model(sessions, model)
        import_fmnist(host["b"], sessions, CATALOG)
        store = open_store(host["b"])
        assert len(list(store.list_keys(MEDIA_PREFIX))) == CATALOG

        request = submit_reindex(host["b"], sessions, CeleryTaskSender(celery), force=True)
        job = wait_for_job(sessions, request.job_id, timeout=240)
        assert job.status is JobStatus.SUCCEEDED, job.error

        # Both worker hosts embedded some of the catalog: each fetched those images into its own cache.
        fetched = {name: cached_media(host[name]) for name in "ac"}
        assert fetched["a"] and fetched["c"], {k: len(v) for k, v in fetched.items()}
        index = active_index(sessions)
        assert index is not None and index.image_count == CATALOG
        assert version_prefix(index.version) in published_versions(store, INDEXES_PREFIX)

        # Host B never built anything, yet serves the version and the images, from the store.
        app = create_app(host["b"])
        try:
            client = app.test_client()
            answer = client.get("/api/v1/items/fmnist-train-00000/similar?k=5")
            assert answer.status_code == 200, answer.json
            assert answer.json["index_version"] == index.version and len(answer.json["results"]) == 5
            image = answer.json["results"][0]["image_url"].rsplit("/", 1)[1]
            assert client.get(f"/api/v1/media/{image}").status_code == 200
        finally:
            app.extensions["lookalike"].close()
        assert not (host["b"].home / "artifacts" / "indexes").exists()
    finally:
        for w in workers:
            w.stop()
        celery.close()
        engine.dispose()
