"""Three hosts that share PostgreSQL, Redis and an object store (a real SeaweedFS), nothing on disk.

Host A runs ``lookalike worker`` and ``lookalike beat``, host B ``lookalike serve``
(gunicorn), host C a second worker; each process has its own ``LOOKALIKE_HOME`` and
cache, so whatever one host wrote, another got through the store. The steps run in
file order on one set of hosts (the module fixture) and build on each other, all
through B's HTTP API: import, reindex shared by both workers, a retrain and publish
under load, A's worker killed mid-reindex (recovered by C, through beat's sweep for
jobs whose heartbeat stopped), and the object store stopped and started again.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests
from alembic import command

from core.artifacts import ArtifactStore, open_store, published_versions
from core.catalog.sample import CLASSES, Split, load_split
from core.config import Settings
from core.db import make_engine, make_session_factory
from core.index_store import INDEXES_PREFIX
from core.registry import activate_model
from core.runs import open_run
from migrations import alembic_config
from tests.conftest import FASHION_MNIST_DIR
from tests.e2e.conftest import ADMIN_KEY, Api, SimilarLoad, png_bytes, write_catalog_csv
from tests.support.processes import ApiProcess, BeatProcess, WorkerProcess, cached_media, wait_until
from tests.support.servers import ObjectStoreServer, PostgresServer, RedisServer, free_port
from tests.worker.conftest import store_hosts_settings
from tests.worker.support import TINY_SPEC
from trainer.register import register_untrained

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis, pytest.mark.objectstore]

CATALOG = 1500
RETRAIN = {"epochs": 1, "steps_per_epoch": 4, "classes_per_batch": 4, "images_per_class": 4,
           "data": {"label": "category", "holdout_classes": ["trouser", "bag"], "augment": "none"}}
"""A retrain of a few seconds: what is tested here is where it runs and what it publishes."""
ORPHANED_SECONDS = 3.0
"""A running job silent this long is sent again (beat sweeps every half of it); heartbeats every 0.5 s."""


@dataclass
class Hosts:
    settings: dict[str, Settings]
    worker_a: WorkerProcess
    beat_a: BeatProcess
    api_b: ApiProcess
    worker_c: WorkerProcess
    api: Api
    store: ArtifactStore
    store_server: ObjectStoreServer
    catalog: list[str]


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory, postgres_server: PostgresServer, redis_server: RedisServer,
          object_store_server: ObjectStoreServer) -> Iterator[Hosts]:
    root = tmp_path_factory.mktemp("three-hosts")
    shared = store_hosts_settings(
        postgres_server, redis_server, object_store_server, name="three-hosts", redis_db=15,
        admin_api_key=ADMIN_KEY, import_roots=(root / "incoming",), index_poll_seconds=0.5,
        # a lost job is looked for every 1.5 s
        job_heartbeat_seconds=0.5, orphaned_job_seconds=ORPHANED_SECONDS,
    )
    url = shared.database_url
    settings = {name: shared.replace(home=root / f"host-{name}") for name in "abc"}
    logs = root / "logs"
    worker_a, worker_c = (WorkerProcess(settings[n], logs / f"worker-{n}.log") for n in "ac")
    beat_a = BeatProcess(settings["a"], logs / "beat-a.log")
    api_b = ApiProcess(settings["b"], logs / "api-b.log", port=free_port())
    for process in (worker_a, worker_c, beat_a):
        process.launch()  # they import torch while the database is migrated
    command.upgrade(alembic_config(url), "head")
    engine = make_engine(settings["b"])
    try:
        # The first model, registered on host B: its checkpoint goes to the store, its row to PostgreSQL.
        sessions = make_session_factory(engine)
        activate_model(sessions, register_untrained(sessions, settings["b"], TINY_SPEC, version="m-three-0"))
        api_b.start(timeout=120)
        for process in (worker_a, worker_c, beat_a):
            process.wait_ready(timeout=120)
        yield Hosts(settings, worker_a, beat_a, api_b, worker_c, Api(api_b.url, requests.Session()),
                    open_store(settings["b"]), object_store_server, [])
    finally:
        for process in (worker_a, beat_a, api_b, worker_c):
            process.stop()
        engine.dispose()
        for log in sorted(logs.glob("*.log")):  # on failure, pytest shows this output
            print(f"----- {log.name} (last 3000 chars)\n{log.read_text(errors='replace')[-3000:]}")


def _served_version(hosts: Hosts) -> str:
    response = hosts.api.similar(hosts.catalog[0])
    assert response.status_code == 200, response.text
    return response.json()["index_version"]


def _wait_served(hosts: Hosts, version: str, timeout: float = 30.0) -> None:
    """Until *every* gunicorn worker of B answers from ``version``.

    Each worker follows the publish on its own (notification, else a 0.5 s poll), so one
    answer proves only the worker that gave it. Sixteen answers in a row, each on a new
    connection (the kernel hands each to either worker), all from ``version``: a worker
    still loading would be hit with probability 1 - 2^-16.
    """
    def every_worker_serving() -> bool:
        for _ in range(16):
            response = requests.get(f"{hosts.api.base}/api/v1/items/{hosts.catalog[0]}/similar",
                                    params={"k": 5}, headers={"Connection": "close"}, timeout=30)
            if response.status_code != 200 or response.json()["index_version"] != version:
                return False
        return True
    wait_until(every_worker_serving, timeout, 0.2, f"every worker of B serving {version}")


def _published(hosts: Hosts) -> list[str]:
    return published_versions(hosts.store, INDEXES_PREFIX)


def _index_prefixes_with_objects(hosts: Hosts) -> set[str]:
    """Every version prefix under indexes/ that has any object, published or not."""
    return {INDEXES_PREFIX + key[len(INDEXES_PREFIX):].partition("/")[0] + "/"
            for key in hosts.store.list_keys(INDEXES_PREFIX)}


def test_import_through_b_and_a_reindex_embedded_by_both_workers(hosts: Hosts) -> None:
    csv, categories = write_catalog_csv(hosts.settings["b"].import_roots[0], CATALOG)
    with csv.open("rb") as f:
        response = hosts.api.post("/api/v1/imports", files={"file": ("catalog.csv", f, "text/csv")})
    assert response.status_code == 202, response.text
    job = hosts.api.wait_job(response.json()["job"]["id"])
    assert job["status"] == "succeeded" and job["result"]["created"] == CATALOG, job
    assert job["params"]["upload"]["key"].startswith("imports/") and "path" not in job["params"]  # via the store
    hosts.catalog[:] = categories

    response = hosts.api.post("/api/v1/reindex", json={"force": True})
    assert response.status_code == 202, response.text
    job = hosts.api.wait_job(response.json()["job"]["id"], timeout=240)
    assert job["status"] == "succeeded", job
    version = job["result"]["index_version"]

    # Both worker hosts embedded part of the catalog: each fetched those images into its own cache.
    fetched = {name: cached_media(hosts.settings[name]) for name in "ac"}
    assert fetched["a"] and fetched["c"], {name: len(found) for name, found in fetched.items()}
    assert _published(hosts) == [f"{INDEXES_PREFIX}{version}/"]

    # B built nothing and holds no artifacts folder of its own, yet serves the version and the images.
    _wait_served(hosts, version)
    answer = hosts.api.similar(hosts.catalog[0]).json()
    assert len(answer["results"]) == 5
    media = hosts.api.get(answer["results"][0]["image_url"].replace(hosts.api.base, ""))
    assert media.status_code == 200 and media.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (hosts.settings["b"].resolved_artifacts_dir / "indexes").exists()


def test_retrain_and_publish_while_b_is_queried_fail_no_request(hosts: Hosts) -> None:
    before = _served_version(hosts)
    with SimilarLoad(hosts.api, [hosts.catalog[::11]]) as load:
        response = hosts.api.post("/api/v1/retrain", json={"config": RETRAIN})
        assert response.status_code == 202, response.text
        retrain = hosts.api.wait_job(response.json()["job"]["id"], timeout=300)
        assert retrain["status"] == "succeeded", retrain
        with open_run(hosts.settings["b"], f"retrain-{retrain['id']}") as run:  # trained on A or C, read on B
            assert {"config.yaml", "metrics.jsonl", "checkpoint.pt"} <= set(run)
        response = hosts.api.post("/api/v1/reindex", json={"force": True})
        reindex = hosts.api.wait_job(response.json()["job"]["id"], timeout=240)
        assert reindex["status"] == "succeeded", reindex
        published = reindex["result"]["index_version"]
        wait_until(lambda: published in load.versions[-3:], 30, 0.2, f"clients served {published}")
    failures, versions = load.failures, load.versions
    assert failures == []
    assert versions[0] == before and versions[-1] == published != before


def test_worker_a_killed_mid_reindex_publishes_nothing_and_c_finishes_the_job(hosts: Hosts) -> None:
    # C is off while the reindex starts, so that A is the one running it; C comes back after the kill.
    hosts.worker_c.stop()
    # A new active model: the reindex embeds the whole catalog again (seconds of work, time to kill it).
    engine = make_engine(hosts.settings["b"])
    try:
        sessions = make_session_factory(engine)
        activate_model(sessions, register_untrained(sessions, hosts.settings["b"], TINY_SPEC, version="m-three-1"))
    finally:
        engine.dispose()
    served, published = _served_version(hosts), _published(hosts)

    response = hosts.api.post("/api/v1/reindex", json={"force": True})
    assert response.status_code == 202, response.text
    job_id = response.json()["job"]["id"]
    job = wait_until(lambda: (j := hosts.api.job(job_id))["status"] == "running"
                     and j["progress"]["phase"] == "embedding" and (j["progress"]["done"] or 0) > 0 and j,
                     120, 0.02, "the reindex half way through embedding on A")
    hosts.worker_a.stop()  # SIGKILL to the whole worker: parent and pool, nobody left to requeue
    assert job["progress"]["done"] < CATALOG
    assert hosts.api.job(job_id)["status"] == "running"
    # Nothing half-published: B serves the old version; the store has no other version prefix at all.
    assert _served_version(hosts) == served
    assert _published(hosts) == published and _index_prefixes_with_objects(hosts) == set(published)

    log_offset = len(hosts.worker_c.log())
    hosts.worker_c.start()  # beat on A sends the sweep; only C consumes it and the job it sends again
    job = hosts.api.wait_job(job_id, timeout=240)
    assert job["status"] == "succeeded", job
    assert job["attempts"] >= 2
    assert re.search(r"Task lookalike\.reindex\[[^]]+\] succeeded", hosts.worker_c.log()[log_offset:])
    version = job["result"]["index_version"]
    assert _published(hosts) == sorted([*published, f"{INDEXES_PREFIX}{version}/"])
    _wait_served(hosts, version)


def _test_png(offset: int) -> tuple[bytes, str]:
    images, labels = load_split(FASHION_MNIST_DIR, Split.TEST)
    return png_bytes(images[offset]), CLASSES[int(labels[offset])][0]


def test_with_the_store_down_b_serves_from_its_cache_uploads_answer_503_then_recover(hosts: Hosts) -> None:
    cached = hosts.api.similar(hosts.catalog[0]).json()["results"][0]["image_url"].replace(hosts.api.base, "")
    assert hosts.api.get(cached).status_code == 200  # now in B's cache
    png, category = _test_png(0)
    hosts.store_server.stop()
    try:
        for external_id in hosts.catalog[:20]:
            assert hosts.api.similar(external_id).status_code == 200
        assert hosts.api.get(cached).status_code == 200
        response = hosts.api.put_item("while-store-down", png, category)
        assert response.status_code == 503, response.text
        error = response.json()["error"]
        assert error["code"] == "store_unavailable"
        assert "nothing of this request was committed" in error["message"]
        assert hosts.api.get("/api/v1/items/while-store-down").status_code == 404
    finally:
        hosts.store_server.restart()
    response = wait_until(lambda: (r := hosts.api.put_item("after-store", png, category)).status_code == 201 and r,
                          30, 1.0, "an upload after the store came back")
    assert response.json()["external_id"] == "after-store"

    def found() -> bool:  # C embedded it (A is gone); B finds it by its own image
        answer = hosts.api.search_image(png)
        return answer.status_code == 200 and answer.json()["results"][0]["external_id"] == "after-store"
    wait_until(found, 90, 0.5, "the new item found by its image")
