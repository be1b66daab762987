"""Uploaded catalog files in the artifact store: create-only keys, checked fetches, retention."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from core.artifacts import ArtifactExists, ArtifactNotFound, LocalStore, open_cache, open_store
from core.catalog.imports import host_bound_rows
from core.config import Settings
from core.db import JobKind
from core.import_uploads import (
    UPLOADS_PREFIX,
    ImportUpload,
    UploadCorrupt,
    fetched_upload,
    prune_uploads,
    save_upload,
    upload_key,
)
from core.jobs import create_job, fail_job, finish_job
from tests.support.servers import ObjectStoreServer

CSV = b"external_id,title,images\nx-1,One,/srv/images/1.png\n"


def _catalog(tmp_path: Path, data: bytes = CSV) -> Path:
    path = tmp_path / "upload.csv"
    path.write_bytes(data)
    return path


def test_an_upload_is_written_once_under_a_fresh_key_and_read_back_checked(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "artifacts")
    upload = save_upload(store, _catalog(tmp_path), "csv")
    assert upload.key.startswith(UPLOADS_PREFIX) and upload.key.endswith(".csv") and upload.size == len(CSV)
    assert save_upload(store, _catalog(tmp_path), "csv").key != upload.key  # per upload, never shared
    with pytest.raises(ArtifactExists):
        store.put_file(upload.key, _catalog(tmp_path, b"other"))  # create-only
    cache = open_cache(Settings(home=tmp_path / "home"), store)
    with fetched_upload(cache, upload) as path:
        assert path.read_bytes() == CSV
    assert ImportUpload.from_dict(upload.to_dict()) == upload
    with pytest.raises(ValueError, match="not under imports/"):
        ImportUpload.from_dict({**upload.to_dict(), "key": "models/m-1.pt"})

    # The local store's file is read in place: its bytes are hashed against the record too.
    (store.root / upload.key).write_bytes(CSV.replace(b"One", b"Two"))
    with pytest.raises(UploadCorrupt, match="sha256"):
        with fetched_upload(cache, upload):
            pass
    (store.root / upload.key).unlink()
    with pytest.raises(ArtifactNotFound):
        with fetched_upload(cache, upload):
            pass


@pytest.mark.objectstore
def test_another_host_fetches_an_upload_through_its_cache(tmp_path: Path,
                                                          object_store_server: ObjectStoreServer) -> None:
    api = Settings(home=tmp_path / "api", artifact_store=f"s3://{object_store_server.bucket}/up-{uuid.uuid4().hex[:8]}",
                   s3_endpoint_url=object_store_server.endpoint_url, s3_access_key_id="test",
                   s3_secret_access_key="test")
    worker = api.replace(home=tmp_path / "worker")
    upload = save_upload(open_store(api), _catalog(tmp_path), "csv")
    cache = open_cache(worker)
    with fetched_upload(cache, upload) as path:
        assert path.read_bytes() == CSV and path.is_relative_to(worker.resolved_cache_dir)
    assert not (api.resolved_artifacts_dir / upload.key).exists()  # nothing of it on the API host's disk
    # A record that does not match the bytes in the store: the download is refused and not kept.
    wrong = ImportUpload(upload.key, "0" * 64, upload.size)
    with pytest.raises(UploadCorrupt, match="does not match"):
        with fetched_upload(open_cache(api.replace(home=tmp_path / "third")), wrong):
            pass
    assert not (tmp_path / "third").joinpath("cache", "objects", upload.key).exists()


def test_prune_deletes_uploads_of_finished_jobs_and_old_orphans_only(tmp_path: Path,
                                                                    sessions: sessionmaker[Session]) -> None:
    store = LocalStore(tmp_path / "artifacts")
    keys = {}
    for name in ("queued", "succeeded", "failed", "young orphan"):
        upload = save_upload(store, _catalog(tmp_path), "csv")
        keys[name] = upload.key
        if name != "young orphan":
            job = create_job(sessions, JobKind.IMPORT, {"upload": upload.to_dict(), "format": "csv"})
            if name == "succeeded":
                finish_job(sessions, job, {})
            elif name == "failed":
                fail_job(sessions, job, "no")
    old = upload_key("csv", datetime.now(UTC) - timedelta(hours=2))
    store.put_bytes(old, CSV)
    store.put_bytes("imports/0123456789abcdef.csv", CSV)  # an upload of an older version: not ours to judge
    deleted = prune_uploads(store, sessions)
    assert sorted(deleted) == sorted([keys["succeeded"], keys["failed"], old])
    assert set(store.list_keys(UPLOADS_PREFIX)) == {keys["queued"], keys["young orphan"],
                                                    "imports/0123456789abcdef.csv"}
    assert prune_uploads(store, sessions) == []


def test_relative_image_paths_are_what_an_upload_cannot_carry(tmp_path: Path) -> None:
    data = (b"external_id,images\nok-1,/srv/images/1.png\nrel-1,images/1.png\nok-2,file:///srv/2.png\n"
            b"rel-2,../x.png|/srv/3.png\n")
    bad = host_bound_rows(_catalog(tmp_path, data), "csv", max_rows=100)
    assert [(e.line, e.external_id) for e in bad] == [(3, "rel-1"), (5, "rel-2")]
    assert "an uploaded catalog has no folder on the server" in bad[0].reason
    assert host_bound_rows(_catalog(tmp_path, data), "csv", max_rows=1) == []  # only a prefix is read
    jsonl = b'{"external_id": "j-1", "images": ["a.png"]}\n'
    assert [e.line for e in host_bound_rows(_catalog(tmp_path, jsonl), "jsonl", max_rows=10)] == [1]
