"""Admin endpoints: imports, reindex, retrain, jobs, models, indexes (embedded and broker-down)."""

from __future__ import annotations

import io
import time

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from core.db import JobKind, JobStatus, ModelVersion, session_scope
from core.jobs import finish_job, get_job, list_jobs
from core.registry import get_model
from core.task_names import TaskName
from service.app import create_app
from service.celery_client import CeleryDispatcher
from tests.service.support import Catalog, png_bytes
from tests.support.processes import wait_until
from trainer.config import TrainConfig
from worker.local import InProcessDispatcher


def wait_job(client: FlaskClient, job_id: int, timeout: float = 60, headers: dict | None = None) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/v1/jobs/{job_id}", headers=headers).json
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
    done = wait_job(client, job["id"], headers=auth)  # the operator's view: the rows' own references
    assert done["status"] == "succeeded", done
    assert done["result"]["created"] == 1 and done["result"]["rejected"] == 2
    # Outside the import roots a file that exists and one that does not are refused alike.
    outside = "not inside the import folders (the catalog's folder or LOOKALIKE_IMPORT_ROOTS)"
    assert done["result"]["errors"] == [f"line 3 (imp-2): image '/nonexistent.png': {outside}",
                                        f"line 4 (imp-3): image '{elsewhere}': {outside}"]
    anonymous = client.get(f"/api/v1/jobs/{job['id']}").json["result"]["errors"]  # no server paths for them
    assert anonymous == [f"line 3 (imp-2): image '<path>': {outside}", f"line 4 (imp-3): image '<path>': {outside}"]
    assert client.get("/api/v1/items/imp-1").json["title"] == "Imported"


def test_an_upload_with_relative_image_paths_is_refused_or_its_rows_are(
        client: FlaskClient, catalog: Catalog, auth: dict, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An upload has no folder on any host: a relative image path is refused up front (the
    rows the API reads) or rejected by the import (the rows further down), saying why."""
    imports = catalog.settings.resolved_artifacts_dir / "imports"
    before = {p.name for p in imports.iterdir()} if imports.is_dir() else set()
    relative = "external_id,title,images\nrel-1,One,images/p.png\n"
    response = client.post("/api/v1/imports", data={"file": (io.BytesIO(relative.encode()), "catalog.csv")},
                           content_type="multipart/form-data", headers=auth)
    assert response.status_code == 400, response.json
    assert "line 2: image 'images/p.png' is a relative path, and an uploaded catalog has no folder" \
        in response.json["error"]["message"]
    assert {p.name for p in imports.iterdir()} == before  # nothing saved

    photo = tmp_path / "import-images" / "ok.png"  # import root: conftest
    photo.parent.mkdir(exist_ok=True)
    photo.write_bytes(png_bytes(4242))
    monkeypatch.setattr("service.api.admin.UPLOAD_CHECK_ROWS", 1)  # the offender lies beyond what the API reads
    csv = f"external_id,title,images\nok-1,Fine,{photo}\nrel-2,Two,images/p.png\n"
    response = client.post("/api/v1/imports", data={"file": (io.BytesIO(csv.encode()), "catalog.csv")},
                           content_type="multipart/form-data", headers=auth)
    assert response.status_code == 202, response.json
    done = wait_job(client, response.json["job"]["id"], headers=auth)
    assert done["status"] == "succeeded" and done["result"]["created"] == 1, done
    assert done["result"]["errors"] == ["line 3 (rel-2): image 'images/p.png' is a relative path, and an uploaded "
                                        "catalog has no folder on the server (the worker that imports it may run "
                                        "on another host): use an absolute path or file:// URI inside the "
                                        "workers' LOOKALIKE_IMPORT_ROOTS"]
    wait_until(lambda: {p.name for p in imports.iterdir()} == before, 10, 0.05,  # the local store's copy:
               "the upload deleted")  # deleted once the job is done


def test_import_needs_a_file_of_a_known_format(client: FlaskClient, auth: dict) -> None:
    response = client.post("/api/v1/imports", data={"file": (io.BytesIO(b"x"), "catalog.xlsx")},
                           content_type="multipart/form-data", headers=auth)
    assert response.status_code == 400 and "format" in response.json["error"]["message"]
    response = client.post("/api/v1/imports", json={"path": "/etc"}, headers=auth)
    assert response.status_code == 415
    response = client.post("/api/v1/imports", data={"format": "csv"}, content_type="multipart/form-data",
                           headers=auth)
    assert response.status_code == 400 and "file" in response.json["error"]["message"]


def test_reindex_publishes(client: FlaskClient, catalog: Catalog, auth: dict) -> None:
    first = client.post("/api/v1/reindex", json={"force": True}, headers=auth)
    assert first.status_code == 202, first.json
    assert first.json["job"]["kind"] == "reindex" and first.json["joined"] is False
    done = wait_job(client, first.json["job"]["id"], timeout=120)
    assert done["status"] == "succeeded", done
    indexes = client.get("/api/v1/indexes").json["indexes"]
    assert indexes[0]["status"] == "active" and indexes[0]["version"] != catalog.index_version
    assert client.post("/api/v1/reindex", json={"force": "yes"}, headers=auth).status_code == 400
    assert client.post("/api/v1/reindex", json={"fast": True}, headers=auth).status_code == 400


def test_a_reindex_request_joins_the_open_job(recording, catalog: Catalog, auth: dict) -> None:
    """The recording dispatcher runs nothing, so the first job stays open: the second request
    must join it; once it has finished, the next request queues a new one."""
    client, dispatcher = recording
    first = client.post("/api/v1/reindex", json={"force": True}, headers=auth)
    assert first.status_code == 202 and first.json["joined"] is False
    second = client.post("/api/v1/reindex", headers=auth)  # no body at all is fine
    assert second.status_code == 202, second.json
    assert second.json["joined"] is True and second.json["job"]["id"] == first.json["job"]["id"]
    assert [task for task, _ in dispatcher.sent] == [TaskName.REINDEX]
    finish_job(catalog.sessions, first.json["job"]["id"])
    third = client.post("/api/v1/reindex", headers=auth)
    assert third.status_code == 202 and third.json["joined"] is False
    assert third.json["job"]["id"] != first.json["job"]["id"]
    assert [task for task, _ in dispatcher.sent] == [TaskName.REINDEX, TaskName.REINDEX]


def _retrain_jobs(catalog: Catalog) -> list[int]:
    return [job.id for job in list_jobs(catalog.sessions, kind=JobKind.RETRAIN)]


def test_retrain_is_queued_as_a_job(recording, catalog: Catalog, auth: dict) -> None:
    client, dispatcher = recording
    overrides = {"loss.margin": 0.3, "optim": {"lr": 0.002}}
    response = client.post("/api/v1/retrain", json={"config": overrides}, headers=auth)
    assert response.status_code == 202, response.json
    job = response.json["job"]
    assert job["kind"] == "retrain" and job["params"]["config"] == overrides
    assert job["celery_task_id"] == "recorded-1"
    assert dispatcher.sent == [(TaskName.RETRAIN, {"job_id": job["id"], "config": overrides})]
    assert _retrain_jobs(catalog) == [job["id"]]


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ({"train.epochs": 1}, "unknown key(s) ['train']"),
        ({"loss.marign": 0.3}, "unknown key(s) ['loss.marign']"),
        ({"loss": {"margin": "wide"}}, "loss.margin must be a number, got 'wide'"),
        ({"epochs": 0}, "epochs must be >= 1"),
        ({"loss.miner": "hard_pairs"}, "loss.miner 'hard_pairs' does not go with loss.kind 'triplet'"),
        ({"data.source": "folder"}, "data.source cannot be overridden"),
        ([], "must be an object of training overrides"),
    ],
)
def test_a_bad_retrain_override_is_a_400_naming_it_and_queues_nothing(
        recording, catalog: Catalog, auth: dict, config: object, named: str) -> None:
    client, dispatcher = recording
    response = client.post("/api/v1/retrain", json={"config": config}, headers=auth)
    assert response.status_code == 400, response.json
    error = response.json["error"]
    assert error["code"] == "invalid_parameter" and error["details"] == {"parameter": "config"}
    assert error["message"].startswith("config: ") and named in error["message"]
    assert dispatcher.sent == [] and _retrain_jobs(catalog) == []


def test_a_retrain_trains_the_active_models_config_with_the_overrides_on_top(
        catalog: Catalog, auth: dict) -> None:
    active = {"loss": {"margin": 0.5, "miner": "batch_all"}, "optim": {"lr": 0.002, "weight_decay": 0.0},
              "model": {"input_size": 32, "embedding_dim": 16}, "amp": False, "eval_batch_size": 64,
              "data": {"source": "folder", "path": "/photos", "holdout_classes": ["boots"]}}
    with session_scope(catalog.sessions) as s:
        model = s.scalars(select(ModelVersion).where(ModelVersion.version == catalog.model_version)).one()
        model.train_config = active
    # no recipe search and no promotion: the run is the config as resolved, and nothing is reindexed
    settings = catalog.settings.replace(retrain_search="off", promotion_margin=1.0)
    dispatcher = InProcessDispatcher(settings, background=True)
    app = create_app(settings, dispatcher=dispatcher)
    try:
        client = app.test_client()
        overrides = {"loss.margin": 0.3, "epochs": 1, "steps_per_epoch": 2, "classes_per_batch": 2,
                     "images_per_class": 2, "data": {"holdout_classes": ["hats"]}}
        response = client.post("/api/v1/retrain", json={"config": overrides}, headers=auth)
        assert response.status_code == 202, response.json
        done = wait_job(client, response.json["job"]["id"], timeout=300)
    finally:
        app.extensions["lookalike"].close()
        dispatcher.close()
    assert done["status"] == "succeeded", done
    resolved = done["result"]["config"]
    assert resolved["loss"]["margin"] == 0.3 and resolved["epochs"] == 1  # the overrides
    assert resolved["loss"]["miner"] == "batch_all"  # the active model's, kept
    assert resolved["optim"] == {**TrainConfig().to_dict()["optim"], "lr": 0.002, "weight_decay": 0.0}
    assert resolved["model"]["embedding_dim"] == 16
    # the active config trained on files: the retrain switched it to the catalog's categories
    assert resolved["data"]["source"] == "catalog" and resolved["data"]["path"] == ""
    assert resolved["data"]["label"] == "category" and resolved["data"]["holdout_classes"] == ["hats"]
    candidate = get_model(catalog.sessions, done["result"]["candidate"])
    assert candidate.train_config == resolved and candidate.spec["embedding_dim"] == 16


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
