"""Admin endpoints: imports, reindex, retrain, jobs, models, indexes (embedded and broker-down)."""

from __future__ import annotations

import io
import time

from flask.testing import FlaskClient

from core.db import JobStatus
from core.jobs import get_job
from core.tasks import TaskName
from service.app import create_app
from service.dispatch import CeleryDispatcher
from tests.service.support import Catalog, png_bytes


def wait_job(client: FlaskClient, job_id: int, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/v1/jobs/{job_id}").json
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.05)
    raise TimeoutError(job_id)


def test_import_upload_runs_a_job(client: FlaskClient, catalog: Catalog, auth: dict, tmp_path) -> None:
    (photo, elsewhere) = (tmp_path / "import-images" / "p.png", tmp_path / "elsewhere.png")  # import root: conftest
    photo.parent.mkdir()
    photo.write_bytes(png_bytes(31337))
    elsewhere.write_bytes(png_bytes(31338))
    csv = (f"external_id,title,category,images\nimp-1,Imported,hats,{photo}\nimp-2,,hats,/nonexistent.png\n"
           f"imp-3,,hats,{elsewhere}\n")
    response = client.post("/api/v1/imports", data={"file": (io.BytesIO(csv.encode()), "catalog.csv")},
                           content_type="multipart/form-data", headers=auth)
    assert response.status_code == 202, response.json
    job = response.json["job"]
    assert job["kind"] == "import" and response.headers["Location"] == f"/api/v1/jobs/{job['id']}"
    done = wait_job(client, job["id"])
    assert done["status"] == "succeeded", done
    assert done["result"]["created"] == 1 and done["result"]["rejected"] == 2
    # Outside the import roots a file that exists and one that does not are refused alike.
    outside = "not inside the import folders (the catalog's folder or LOOKALIKE_IMPORT_ROOTS)"
    assert done["result"]["errors"] == [f"line 3 (imp-2): image '/nonexistent.png': {outside}",
                                        f"line 4 (imp-3): image '{elsewhere}': {outside}"]
    assert client.get("/api/v1/items/imp-1").json["title"] == "Imported"


def test_import_needs_a_file_of_a_known_format(client: FlaskClient, auth: dict) -> None:
    response = client.post("/api/v1/imports", data={"file": (io.BytesIO(b"x"), "catalog.xlsx")},
                           content_type="multipart/form-data", headers=auth)
    assert response.status_code == 400 and "format" in response.json["error"]["message"]
    response = client.post("/api/v1/imports", json={"path": "/etc"}, headers=auth)
    assert response.status_code == 415
    response = client.post("/api/v1/imports", data={"format": "csv"}, content_type="multipart/form-data",
                           headers=auth)
    assert response.status_code == 400 and "file" in response.json["error"]["message"]


def test_reindex_publishes_and_joins(client: FlaskClient, catalog: Catalog, auth: dict) -> None:
    first = client.post("/api/v1/reindex", json={"force": True}, headers=auth)
    assert first.status_code == 202, first.json
    assert first.json["job"]["kind"] == "reindex"
    second = client.post("/api/v1/reindex", headers=auth)  # no body at all is fine
    assert second.status_code == 202
    if second.json["joined"]:
        assert second.json["job"]["id"] == first.json["job"]["id"]
    done = wait_job(client, first.json["job"]["id"], timeout=120)
    assert done["status"] == "succeeded", done
    indexes = client.get("/api/v1/indexes").json["indexes"]
    assert indexes[0]["status"] == "active" and indexes[0]["version"] != catalog.index_version
    assert client.post("/api/v1/reindex", json={"force": "yes"}, headers=auth).status_code == 400
    assert client.post("/api/v1/reindex", json={"fast": True}, headers=auth).status_code == 400


def test_retrain_is_queued_as_a_job(recording, auth: dict) -> None:
    client, dispatcher = recording
    response = client.post("/api/v1/retrain", json={"config": {"train.epochs": 1}}, headers=auth)
    assert response.status_code == 202
    job = response.json["job"]
    assert job["kind"] == "retrain" and job["params"]["config"] == {"train.epochs": 1}
    assert job["celery_task_id"] == "recorded-1"
    assert dispatcher.sent == [(TaskName.RETRAIN, {"job_id": job["id"], "config": {"train.epochs": 1}})]
    assert client.post("/api/v1/retrain", json={"config": []}, headers=auth).status_code == 400
    assert len(dispatcher.sent) == 1


def test_jobs_list_and_get(recording, auth: dict) -> None:
    client, _ = recording
    job_id = client.post("/api/v1/retrain", headers=auth).json["job"]["id"]
    listed = client.get("/api/v1/jobs?kind=retrain").json["jobs"]
    assert job_id in [j["id"] for j in listed] and all(j["kind"] == "retrain" for j in listed)
    assert client.get(f"/api/v1/jobs/{job_id}").json["id"] == job_id
    assert client.get("/api/v1/jobs/999999").status_code == 404
    assert client.get("/api/v1/jobs/abc").status_code == 404
    assert client.get("/api/v1/jobs?kind=nap").status_code == 400


def test_models_list_and_activate(client: FlaskClient, catalog: Catalog, auth: dict) -> None:
    models = client.get("/api/v1/models").json["models"]
    assert [m["version"] for m in models] == [catalog.model_version]
    assert models[0]["status"] == "active"
    response = client.post(f"/api/v1/models/{catalog.model_version}/activate", json={"reindex": False},
                           headers=auth)
    assert response.status_code == 200 and response.json["reindex_job_id"] is None
    assert client.post("/api/v1/models/m-nope/activate", headers=auth).status_code == 404
    assert client.post(f"/api/v1/models/{catalog.model_version}/activate", headers=auth,
                       json={"reindex": "no"}).status_code == 400


def test_indexes_mark_the_served_one(client: FlaskClient, catalog: Catalog) -> None:
    client.get("/api/v1/items/sku-001/similar")  # loads the index in this process
    rows = client.get("/api/v1/indexes").json["indexes"]
    served = [r for r in rows if r["served_here"]]
    assert [r["version"] for r in served] == [catalog.index_version]


def test_broker_down_fails_the_job_and_answers_503(catalog: Catalog, api_key: str) -> None:
    settings = catalog.settings.replace(broker_url="redis://127.0.0.1:1/0")
    app = create_app(settings, dispatcher=CeleryDispatcher(settings, connect_timeout=0.5))
    try:
        client = app.test_client()
        for url in ("/api/v1/reindex", "/api/v1/retrain"):
            response = client.post(url, headers={"X-API-Key": api_key})
            assert response.status_code == 503, response.json
            assert response.json["error"]["code"] == "broker_unavailable"
            assert "unreachable" in response.json["error"]["message"]
        failed = client.get("/api/v1/jobs?status=failed").json["jobs"]
        assert {j["kind"] for j in failed} == {"reindex", "retrain"}
        assert all(get_job(catalog.sessions, j["id"]).status is JobStatus.FAILED for j in failed)
        # a later request is not blocked by the failed one
        assert client.post("/api/v1/reindex", headers={"X-API-Key": api_key}).status_code == 503
    finally:
        app.extensions["lookalike"].close()
