"""No server filesystem path reaches an anonymous reader; keyed callers see artifact keys.

The catalog is real work, not rows written by hand: a CSV upload imported by the API (one
row names a missing file), its images embedded and indexed by the worker code, a retrain
that trains and registers a candidate (its run directory is in the job result), and an
import of a file that does not exist (a failed job whose error is about a path). Then
every GET operation of service/openapi.yaml is called without a key.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine

from core.config import Settings
from core.db import JobKind, JobStatus, make_session_factory
from core.jobs import create_job, get_job
from core.registry import active_index
from core.task_names import TaskName
from service.apikeys import create_key
from service.app import create_app
from service.openapi import SPEC_FILE
from service.redact import HIDDEN, PathRedactor, PathView
from tests.worker.conftest import tuned
from tests.worker.support import TINY_TRAINING, register_tiny_model, write_fmnist_folder
from worker.local import InProcessDispatcher

ABSOLUTE_PATH = re.compile(r"(?<![\w:/.#])/[^\s'\"<>`]+")
"""A token that starts with a slash; every such token in an answer must be one of the service's URLs."""
SERVICE_URLS = ("/api/v1", "/healthz", "/readyz", "/metrics")


@dataclass
class Served:
    app: Flask
    settings: Settings
    key: str
    root: Path
    """The test's temporary directory: the artifacts, the photos and the import files are all under it."""
    import_job: int
    failed_job: int
    retrain_job: int


@pytest.fixture
def served(tmp_path: Path, settings: Settings, sqlite_engine: Engine) -> Iterator[Served]:
    settings = tuned(settings.replace(database_url=settings.resolved_database_url,
                                      import_roots=(tmp_path / "photos",)))  # where the uploaded CSV's photos are
    sessions = make_session_factory(sqlite_engine)
    register_tiny_model(settings, sessions)
    dispatcher = InProcessDispatcher(settings)  # runs each task as it is sent
    app = create_app(settings, dispatcher=dispatcher, watch_index=False)
    key, _ = create_key(sessions, "tests")
    client = app.test_client()
    photos = write_fmnist_folder(tmp_path / "photos", 80)
    lines = ["external_id,title,category,images"]
    lines += [f"fm-{i},Photo {i},{p.parent.name},{p}" for i, p in enumerate(sorted(photos.rglob("*.png")))]
    lines.append(f"fm-missing,Missing,bag,{tmp_path / 'nowhere' / 'gone.png'}")
    response = client.post("/api/v1/imports", headers={"X-API-Key": key}, content_type="multipart/form-data",
                           data={"file": (io.BytesIO("\n".join(lines).encode()), "catalog.csv")})
    assert response.status_code == 202, response.json
    import_job = response.json["job"]["id"]
    assert get_job(sessions, import_job).status is JobStatus.SUCCEEDED
    assert active_index(sessions) is not None  # the import's images were embedded and indexed

    missing = tmp_path / "exports" / "products.csv"
    failed_job = create_job(sessions, JobKind.IMPORT, {"path": str(missing), "format": "csv"})
    dispatcher.send(TaskName.IMPORT_CATALOG, job_id=failed_job, path=str(missing), format="csv")
    assert get_job(sessions, failed_job).status is JobStatus.FAILED

    retrain_job = create_job(sessions, JobKind.RETRAIN, {"reason": "test"})
    dispatcher.send(TaskName.RETRAIN, job_id=retrain_job, overrides=TINY_TRAINING)
    retrained = get_job(sessions, retrain_job)
    assert retrained.status is JobStatus.SUCCEEDED, retrained.error
    assert str(tmp_path) in json.dumps(retrained.result)  # the run directory: there is a path to hide
    scan = client.post("/api/v1/duplicates/scans", headers={"X-API-Key": key}, json={})  # GET /duplicates serves it
    assert get_job(sessions, scan.json["job"]["id"]).status is JobStatus.SUCCEEDED
    yield Served(app, settings, key, tmp_path, import_job, failed_job, retrain_job)
    app.extensions["lookalike"].close()
    dispatcher.close()


def get_urls(client: FlaskClient, served: Served) -> list[str]:
    """Every GET operation of the spec, its path parameters filled from the catalog and the jobs."""
    spec = yaml.safe_load(SPEC_FILE.read_text(encoding="utf-8"))
    item = client.get("/api/v1/items/fm-0").json
    jobs = [j["id"] for j in client.get("/api/v1/jobs?limit=100").json["jobs"]]
    assert {served.import_job, served.failed_job, served.retrain_job} <= set(jobs)
    values = {"external_id": ["fm-0"], "job_id": jobs,
              "key": [item["images"][0]["url"].removeprefix("/api/v1/media/")]}
    urls = []
    for path, operations in spec["paths"].items():
        if "get" not in operations:
            continue
        names = re.findall(r"{(\w+)}", path)
        assert len(names) <= 1, path
        if not names:
            urls.append(path)
        for name in names:
            urls += [path.replace(f"{{{name}}}", str(v)) for v in values[name]]
    return urls


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)
    elif isinstance(value, str):
        yield value


def test_no_answer_to_an_anonymous_reader_names_a_server_path(served: Served) -> None:
    client = served.app.test_client()
    urls = get_urls(client, served)
    assert len(urls) >= 14  # 13 GET operations, several jobs
    for url in [*urls, "/jobs"]:  # the web UI's job page shows the same jobs
        response = client.get(url)
        assert response.status_code == 200, (url, response.status_code)
        body = response.get_data()
        assert str(served.root).encode() not in body, url
        assert str(served.settings.resolved_artifacts_dir).encode() not in body, url
        assert b"/usr/share/datasets" not in body, url
        if response.mimetype == "application/json":
            for text in strings(response.json):
                for token in ABSOLUTE_PATH.findall(text):
                    assert token.startswith(SERVICE_URLS), (url, token, text)


UPLOAD_KEY = r"imports/\d{8}T\d{6}Z-[0-9a-f]{16}\.csv"


def test_the_paths_an_anonymous_reader_would_have_seen_are_marked_hidden(served: Served) -> None:
    client = served.app.test_client()
    model = client.get("/api/v1/models").json["models"][-1]
    assert model["checkpoint_path"] == HIDDEN
    imported = client.get(f"/api/v1/jobs/{served.import_job}").json
    # an uploaded catalog is named by its key in the artifact store: no server path to hide
    assert re.fullmatch(UPLOAD_KEY, imported["params"]["upload"]["key"]) and "path" not in imported["params"]
    assert imported["params"]["filename"] == "catalog.csv"
    failed = client.get(f"/api/v1/jobs/{served.failed_job}").json
    assert failed["params"]["path"] == HIDDEN
    assert "products.csv" not in failed["error"] and "exports" not in failed["error"]


def test_a_keyed_caller_sees_artifact_keys_relative_to_the_artifacts_dir(served: Served) -> None:
    client = served.app.test_client()
    headers = {"Authorization": f"Bearer {served.key}"}
    artifacts = served.settings.resolved_artifacts_dir
    model = client.get("/api/v1/models", headers=headers).json["models"][-1]
    assert model["checkpoint_path"] == "models/m-test-0.pt"
    assert (artifacts / model["checkpoint_path"]).is_file()
    upload = client.get(f"/api/v1/jobs/{served.import_job}", headers=headers).json["params"]["upload"]["key"]
    assert re.fullmatch(UPLOAD_KEY, upload)
    assert not (artifacts / upload).exists()  # the job has succeeded: its upload is deleted (retention)
    run_dir = client.get(f"/api/v1/jobs/{served.retrain_job}", headers=headers).json["result"]["run_dir"]
    assert run_dir == f"runs/retrain-{served.retrain_job}" and (artifacts / run_dir).is_dir()
    # a path outside the artifacts is the operator's own (the file named on the import): as it is
    failed = client.get(f"/api/v1/jobs/{served.failed_job}", headers=headers).json
    assert failed["params"]["path"] == str(served.root / "exports" / "products.csv")
    # an invalid key is no key: the answer is the anonymous one
    bad = client.get("/api/v1/models", headers={"X-API-Key": "not-a-key"}).json["models"][-1]
    assert bad["checkpoint_path"] == HIDDEN


@pytest.mark.parametrize("view, expected", [
    (PathView.HIDDEN, "read <path> and <path>: see /api/v1/jobs/3, http://shop.example/a/b, 1/k, S/M"),
    (PathView.ARTIFACT_KEYS, "read models/m-1.pt and /home/u/x.csv: see /api/v1/jobs/3, http://shop.example/a/b, "
                             "1/k, S/M"),
])
def test_paths_inside_text(view: PathView, expected: str) -> None:
    """The artifacts directory may hold a space; URLs and fractions are no paths."""
    redactor = PathRedactor(Path("/srv/my art/artifacts"), view)
    text = ("read /srv/my art/artifacts/models/m-1.pt and /home/u/x.csv: see /api/v1/jobs/3, "
            "http://shop.example/a/b, 1/k, S/M")
    assert redactor.text(text) == expected


def test_a_sibling_of_the_artifacts_dir_is_no_artifact() -> None:
    redactor = PathRedactor(Path("/srv/artifacts"), PathView.ARTIFACT_KEYS)
    assert redactor.text("/srv/artifacts2/x.pt /srv/artifacts") == "/srv/artifacts2/x.pt ."
    assert PathRedactor(Path("/srv/artifacts"), PathView.HIDDEN).text("/srv/artifacts2/x.pt") == HIDDEN
