"""A catalog uploaded to the API on host B is imported by the worker on host A, through the store.

Real processes: gunicorn (``lookalike serve``) on B, ``lookalike worker`` (Celery) on A,
a real SeaweedFS, PostgreSQL and Redis. Each host has its own home, artifacts folder and
cache; the images are on A's disk only (its ``LOOKALIKE_IMPORT_ROOTS``; B has none), so the
upload can only have reached A through the store.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from alembic import command

from core.artifacts import ArtifactStore, open_store
from core.config import Settings
from core.db import make_engine, make_session_factory
from core.import_uploads import UPLOADS_PREFIX, prune_uploads
from migrations import alembic_config
from tests.service.support import png_bytes
from tests.support.processes import ApiProcess, WorkerProcess, wait_until
from tests.support.servers import ObjectStoreServer, PostgresServer, RedisServer, free_port
from tests.worker.conftest import store_hosts_settings

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.objectstore, pytest.mark.slow]
KEY = "upload-hosts-key"


@dataclass
class Hosts:
    a: Settings
    b: Settings
    worker_a: WorkerProcess
    api_b: ApiProcess
    store: ArtifactStore
    store_server: ObjectStoreServer
    images: Path
    database_url: str

    def post_catalog(self, csv: str) -> requests.Response:
        return requests.post(f"{self.api_b.url}/api/v1/imports", headers={"X-API-Key": KEY}, timeout=30,
                             files={"file": ("catalog.csv", csv.encode(), "text/csv")})

    def job(self, job_id: int) -> dict:
        return requests.get(f"{self.api_b.url}/api/v1/jobs/{job_id}", headers={"X-API-Key": KEY}, timeout=30).json()

    def wait_job(self, job_id: int, timeout: float = 45.0) -> dict:
        return wait_until(lambda: (j := self.job(job_id))["status"] in {"succeeded", "failed"} and j,
                          timeout, 0.2, f"job {job_id} finished")

    def import_jobs(self) -> int:
        return len(requests.get(f"{self.api_b.url}/api/v1/jobs", params={"kind": "import"}, timeout=30).json()["jobs"])

    def uploads(self) -> list[str]:
        return list(self.store.list_keys(UPLOADS_PREFIX))


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory, postgres_server: PostgresServer, redis_server: RedisServer,
          object_store_server: ObjectStoreServer) -> Iterator[Hosts]:
    root = tmp_path_factory.mktemp("upload-hosts")
    shared = store_hosts_settings(postgres_server, redis_server, object_store_server, name="uploads", redis_db=12,
                                  admin_api_key=KEY)
    url = shared.database_url
    images = root / "a-images"  # on host A's disk only
    images.mkdir()
    a = shared.replace(home=root / "host-a", import_roots=(images,))
    b = shared.replace(home=root / "host-b")
    worker_a = WorkerProcess(a, root / "worker-a.log")
    api_b = ApiProcess(b, root / "api-b.log", port=free_port(), workers=1)
    worker_a.launch()
    command.upgrade(alembic_config(url), "head")
    try:
        api_b.start(timeout=120)
        worker_a.wait_ready(timeout=120)
        yield Hosts(a, b, worker_a, api_b, open_store(b), object_store_server, images, url)
    finally:
        worker_a.stop()
        api_b.stop()
        for process in (worker_a, api_b):
            print(f"----- {process.log_path.name}\n{process.log()[-3000:]}")


def _catalog(hosts: Hosts, prefix: str, n: int) -> str:
    lines = ["external_id,title,images"]
    for i in range(n):
        photo = hosts.images / f"{prefix}-{i}.png"
        photo.write_bytes(png_bytes(hash((prefix, i)) % 10**6))
        lines.append(f"{prefix}-{i},{prefix} {i},{photo}")
    return "\n".join(lines) + "\n"


def test_an_upload_to_b_is_fetched_by_a_through_its_cache_and_deleted_once_imported(hosts: Hosts) -> None:
    response = hosts.post_catalog(_catalog(hosts, "up", 4))
    assert response.status_code == 202, response.text
    params = response.json()["job"]["params"]
    key = params["upload"]["key"]
    assert key.startswith(UPLOADS_PREFIX) and "path" not in params  # a store key, no host path
    job = hosts.wait_job(response.json()["job"]["id"])
    assert job["status"] == "succeeded" and job["result"]["created"] == 4, job
    assert not [p for p in (hosts.b.resolved_artifacts_dir / "imports").iterdir()]  # B kept no copy
    wait_until(lambda: key not in hosts.uploads(), 10, 0.1, "the upload deleted")  # retention: job done
    assert f"fetched import upload {key}" in hosts.worker_a.log()  # A read it through its own cache,
    assert not (hosts.a.resolved_cache_dir / "objects" / key).exists()  # and dropped its copy with the job


def test_a_zip_carries_its_images_to_a_which_has_none_of_them(hosts: Hosts) -> None:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("catalog.csv", "external_id,title,images\n" + "".join(
            f"zip-{i},Zipped {i},photos/{i}.png\n" for i in range(3)))
        for i in range(3):
            z.writestr(f"photos/{i}.png", png_bytes(900 + i))
    response = requests.post(f"{hosts.api_b.url}/api/v1/imports", headers={"X-API-Key": KEY}, timeout=30,
                             files={"file": ("shop.zip", archive.getvalue(), "application/zip")})
    assert response.status_code == 202, response.text
    job = hosts.wait_job(response.json()["job"]["id"])
    assert job["status"] == "succeeded" and job["result"]["created"] == 3, job
    assert job["params"]["format"] == "zip"
    wait_until(lambda: job["params"]["upload"]["key"] not in hosts.uploads(), 10, 0.1, "the zip deleted")
    url = requests.get(f"{hosts.api_b.url}/api/v1/items/zip-2", timeout=30).json()["images"][0]["url"]
    assert requests.get(hosts.api_b.url + url, timeout=30).content == png_bytes(902)  # A put it in the store
    assert not list(hosts.a.resolved_cache_dir.glob(".archive-*"))  # the unpacked copy is gone
    bad = requests.post(f"{hosts.api_b.url}/api/v1/imports", headers={"X-API-Key": KEY}, timeout=30,
                        files={"file": ("shop.zip", b"not a zip", "application/zip")})
    assert bad.status_code == 400 and "not a readable zip archive" in bad.json()["error"]["message"], bad.text


def test_a_relative_image_path_is_refused_at_request_time(hosts: Hosts) -> None:
    before = hosts.import_jobs()
    response = hosts.post_catalog("external_id,title,images\nrel-1,One,images/rel-1.png\n")
    assert response.status_code == 400, response.text
    message = response.json()["error"]["message"]
    assert "line 2: image 'images/rel-1.png' is a relative path" in message
    assert "the worker that imports it may run on another host" in message
    assert hosts.import_jobs() == before and hosts.uploads() == []


def test_with_the_store_down_an_upload_answers_503_and_saves_nothing(hosts: Hosts) -> None:
    before = hosts.import_jobs()
    hosts.store_server.stop()
    try:
        response = hosts.post_catalog(_catalog(hosts, "down", 1))
    finally:
        hosts.store_server.restart()
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] == "store_unavailable" and response.headers["Retry-After"] == "5"
    assert "the import file was not saved and no job was created" in error["message"]
    assert hosts.import_jobs() == before and hosts.uploads() == []


def test_with_the_store_down_when_a_fetches_the_job_fails_and_loses_nothing(hosts: Hosts) -> None:
    hosts.worker_a.stop()  # the job waits in the queue while the store goes down
    response = hosts.post_catalog(_catalog(hosts, "late", 2))
    assert response.status_code == 202, response.text
    job_id, key = response.json()["job"]["id"], response.json()["job"]["params"]["upload"]["key"]
    hosts.store_server.stop()
    try:
        hosts.worker_a.start(timeout=120)
        job = hosts.wait_job(job_id)
    finally:
        hosts.store_server.restart()
    assert job["status"] == "failed", job
    assert job["error"].startswith("the artifact store cannot be reached, so the uploaded catalog file could not "
                                   "be fetched: nothing was imported"), job["error"]
    assert requests.get(f"{hosts.api_b.url}/api/v1/items/late-0", timeout=30).status_code == 404
    assert key in hosts.uploads()  # the worker could not delete it either: the upload is still whole
    engine = make_engine(hosts.database_url)
    try:  # beat's sweep (RECOVER_JOBS) deletes it now that its job has finished
        assert prune_uploads(hosts.store, make_session_factory(engine)) == [key]
    finally:
        engine.dispose()
    assert hosts.uploads() == []
