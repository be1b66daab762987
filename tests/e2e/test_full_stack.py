"""The product end to end on the native full stack, through HTTP, with faults injected.

The steps run in file order on one stack (the module fixture) and build on each
other: a catalog, a model, an index; then new items, a retrain, a publish under
load; then a killed worker, a stopped Redis and a restarted PostgreSQL.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from core.artifacts import open_store
from core.catalog.sample import CLASSES, Split, load_split
from core.media import MEDIA_PREFIX
from tests.conftest import FASHION_MNIST_DIR
from tests.e2e.conftest import E2E, SimilarLoad, png_bytes, write_catalog_csv

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

CATALOG_SIZE = 3000
QUALITY_QUERIES = 150
TRAIN_CONFIG = {
    # All but two distinct categories are trained on (the look-alike ones, shirt,
    # pullover and coat, need the training most); the two held out decide promotion.
    "data": {"source": "catalog", "label": "category", "holdout_classes": ["trouser", "bag"],
             "augment": "none", "preload": True, "eval_max_per_class": 200},
    "model": {"backbone": "small_cnn", "embedding_dim": 64, "input_size": 28},
    # batch-all reached 95 % same-category top-5 on this catalog where batch-hard,
    # at the same number of steps, was still at 74 % (hardest-only triplets learn slower).
    "loss": {"kind": "triplet", "miner": "batch_all", "margin": 0.2},
    "optim": {"lr": 3e-3, "warmup_epochs": 0.2},
    "classes_per_batch": 8, "images_per_class": 16, "epochs": 12, "steps_per_epoch": 25,
}
CATALOG_IDS: list[str] = []
"""External ids of the imported catalog, filled by the first step."""


def _test_images(start: int, n: int) -> list[tuple[bytes, str]]:
    """Test-split images (never in the catalog) as PNG bytes with their category."""
    images, labels = load_split(FASHION_MNIST_DIR, Split.TEST)
    return [(png_bytes(images[i]), CLASSES[int(labels[i])][0]) for i in range(start, start + n)]


def _index_version(e2e: E2E) -> str:
    response = e2e.api.similar("fm-00000")
    assert response.status_code == 200, response.text
    return response.json()["index_version"]


def _wait_found(e2e: E2E, png: bytes, external_id: str, timeout: float = 60.0) -> dict:
    """Search by ``png`` until ``external_id`` is the best match."""
    deadline = time.monotonic() + timeout
    while True:
        response = e2e.api.search_image(png)
        if response.status_code == 200 and response.json()["results"][0]["external_id"] == external_id:
            return response.json()
        if time.monotonic() > deadline:
            raise AssertionError(f"{external_id} not found by its own image: "
                                 f"{response.status_code} {response.text[:500]}")
        time.sleep(0.5)


def test_import_train_reindex_gives_same_category_neighbours(e2e: E2E) -> None:
    csv, categories = write_catalog_csv(e2e.home / "incoming", CATALOG_SIZE)
    with csv.open("rb") as f:
        response = e2e.api.post("/api/v1/imports", files={"file": ("catalog.csv", f, "text/csv")})
    assert response.status_code == 202, response.text
    job = e2e.api.wait_job(response.json()["job"]["id"])
    assert job["status"] == "succeeded", job
    assert job["result"]["created"] == CATALOG_SIZE and job["result"]["errors"] == []

    response = e2e.api.post("/api/v1/retrain", json={"config": TRAIN_CONFIG})
    assert response.status_code == 202, response.text
    job = e2e.api.wait_job(response.json()["job"]["id"], timeout=600)
    assert job["status"] == "succeeded", job
    assert job["result"]["promoted"] is True, job["result"]  # the first model: nothing to beat

    response = e2e.api.post("/api/v1/reindex", json={"force": True})
    assert response.status_code == 202, response.text
    job = e2e.api.wait_job(response.json()["job"]["id"])
    assert job["status"] == "succeeded", job

    same = total = 0
    for external_id in list(categories)[:: CATALOG_SIZE // QUALITY_QUERIES]:
        response = e2e.api.similar(external_id, k=5)
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        assert len(results) == 5 and external_id not in {r["external_id"] for r in results}
        same += sum(r["category"] == categories[external_id] for r in results)
        total += len(results)
    assert same / total >= 0.80, f"only {same / total:.0%} of top-5 neighbours share the query's category"
    CATALOG_IDS[:] = categories


def test_items_added_through_the_api_are_found_before_any_rebuild(e2e: E2E) -> None:
    served = _index_version(e2e)
    indexes_before = e2e.api.get("/api/v1/indexes").json()
    for n, (png, category) in enumerate(_test_images(0, 3)):
        response = e2e.api.put_item(f"new-{n}", png, category)
        assert response.status_code == 201, response.text
    for n, (png, _) in enumerate(_test_images(0, 3)):
        found = _wait_found(e2e, png, f"new-{n}")
        assert found["results"][0]["distance"] < 1e-3
        assert found["index_version"] == served  # served from the fresh set, not a new index
    assert e2e.api.get("/api/v1/indexes").json() == indexes_before


def test_retrain_on_demand_and_publish_under_load_fail_no_request(e2e: E2E) -> None:
    before = _index_version(e2e)
    with SimilarLoad(e2e.api, [CATALOG_IDS[offset::7] for offset in range(2)]) as load:
        response = e2e.api.post("/api/v1/retrain", json={"config": {**TRAIN_CONFIG, "epochs": 2}})
        assert response.status_code == 202, response.text
        retrain = e2e.api.wait_job(response.json()["job"]["id"], timeout=600)
        assert retrain["status"] == "succeeded", retrain
        assert "decision" in retrain["result"]  # promoted or kept, the decision is recorded
        response = e2e.api.post("/api/v1/reindex", json={"force": True})
        reindex = e2e.api.wait_job(response.json()["job"]["id"])
        assert reindex["status"] == "succeeded", reindex
        published = reindex["result"]["index_version"]
        deadline = time.monotonic() + 15
        while published not in load.versions[-5:] and time.monotonic() < deadline:
            time.sleep(0.2)
    failures, versions = load.failures, load.versions
    assert failures == []
    assert len(versions) > 50
    assert versions[0] == before and versions[-1] == published != before


def test_worker_killed_mid_reindex_is_restarted_and_the_job_completes(e2e: E2E) -> None:
    worker = e2e.stack.services["worker"]
    first_pid = worker.pid
    for _attempt in range(5):
        response = e2e.api.post("/api/v1/reindex", json={"force": True})
        job_id = response.json()["job"]["id"]
        while (status := e2e.api.job(job_id)["status"]) == "queued":
            time.sleep(0.01)
        if status == "running":
            e2e.stack.kill("worker", signal.SIGKILL)  # the whole worker: parent and pool
            break
        e2e.api.wait_job(job_id)  # too quick to catch: try again
    else:
        pytest.fail("never caught a reindex running")
    assert e2e.api.job(job_id)["status"] == "running"  # nobody left to finish or fail it

    job = e2e.api.wait_job(job_id, timeout=180)
    assert job["status"] == "succeeded", job
    assert job["attempts"] >= 2
    assert worker.running and worker.pid != first_pid  # the supervisor brought it back


def test_with_redis_down_queries_are_served_and_writes_answer_503(e2e: E2E) -> None:
    png, category = _test_images(10, 1)[0]
    e2e.stack.stop_service("redis")
    try:
        for external_id in CATALOG_IDS[:20]:
            assert e2e.api.similar(external_id).status_code == 200
        response = e2e.api.put_item("while-redis-down", png, category)
        assert response.status_code == 503, response.text
        error = response.json()["error"]
        assert error["code"] == "broker_unavailable"
        assert "broker" in error["message"] and "saved" in error["message"]
        response = e2e.api.post("/api/v1/reindex", json={})
        assert response.status_code == 503 and response.json()["error"]["code"] == "broker_unavailable"
    finally:
        e2e.stack.start_service("redis")

    deadline = time.monotonic() + 30
    while (response := e2e.api.put_item("after-redis", png, category)).status_code != 201:
        assert time.monotonic() < deadline, response.text
        time.sleep(1)
    _wait_found(e2e, png, "after-redis", timeout=90)  # the worker reconnected and embedded it


def test_with_the_object_store_down_queries_are_served_and_new_images_answer_503(e2e: E2E) -> None:
    store = open_store(e2e.stack.settings)
    assert len(list(store.list_keys(MEDIA_PREFIX))) >= len(CATALOG_IDS)  # the catalog went through it
    api_home = e2e.stack.config.root / "hosts" / "api"
    assert not (api_home / "artifacts" / "indexes").exists()  # the API host built nothing: it fetched
    png, category = _test_images(20, 1)[0]
    e2e.stack.stop_service("seaweedfs")
    try:
        for external_id in CATALOG_IDS[:20]:
            assert e2e.api.similar(external_id).status_code == 200  # the served index is in the API's cache
        response = e2e.api.put_item("while-store-down", png, category)
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "store_unavailable"
        assert e2e.api.get("/api/v1/items/while-store-down").status_code == 404  # nothing committed
    finally:
        e2e.stack.start_service("seaweedfs")
    deadline = time.monotonic() + 30
    while (response := e2e.api.put_item("after-store", png, category)).status_code != 201:
        assert time.monotonic() < deadline, response.text
        time.sleep(1)
    _wait_found(e2e, png, "after-store", timeout=90)


def test_the_api_recovers_from_a_postgres_restart_without_restarting(e2e: E2E) -> None:
    api = e2e.stack.services["api"]
    master = api.pid
    workers = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    e2e.stack.restart_service("postgres")

    deadline = time.monotonic() + 10
    while e2e.api.similar("fm-00001").status_code != 200:
        assert time.monotonic() < deadline, "the API did not recover within 10 s"
        time.sleep(0.2)
    assert all(e2e.api.similar(i).status_code == 200 for i in CATALOG_IDS[:30])
    png, category = _test_images(20, 1)[0]
    assert e2e.api.put_item("after-postgres", png, category).status_code == 201
    assert api.pid == master
    assert Path(f"/proc/{master}/task/{master}/children").read_text().split() == workers
