"""Near-duplicate scans as jobs: `POST /api/v1/duplicates/scans` runs what core.duplicates finds,
`GET /api/v1/duplicates` serves the latest; their parameters and their refusals."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
from flask.testing import FlaskClient
from PIL import Image
from sqlalchemy import select

from core.catalog import delete_items
from core.config import Settings
from core.db import ItemImage, make_session_factory, session_scope
from core.duplicates import find_duplicates_with, report_to_dict
from core.media import MediaStore
from service.apikeys import create_key
from service.app import create_app
from tests.service.support import Catalog, add_items, embed, publish

COPIES = {"sku-003": "copy-a", "sku-040": "copy-b", "sku-041": "copy-c"}
"""Original -> a new item whose photo is the original's first photo saved again (other bytes, the same
pixels) and whose vector is that photo's, barely moved."""


def _saved_again(catalog: Catalog, image_id: int) -> bytes:
    store = MediaStore.from_settings(catalog.settings)
    with session_scope(catalog.sessions) as s:
        key = s.scalar(select(ItemImage.media_key).where(ItemImage.id == image_id))
    buf = io.BytesIO()
    Image.open(io.BytesIO(store.read_bytes(key))).save(buf, "PNG", compress_level=0)
    return buf.getvalue()


@pytest.fixture
def planted(catalog: Catalog) -> Catalog:
    add_items(catalog, [{"external_id": copy,
                         "photos": [_saved_again(catalog, catalog.items[original]["image_ids"][0])]}
                        for original, copy in COPIES.items()], seed_base=5000)
    rng = np.random.default_rng(3)
    ids, vectors = [], []
    for original, copy in COPIES.items():
        v = catalog.vectors[catalog.items[original]["image_ids"][0]] + rng.normal(0, 1e-3, 32)
        ids.append(catalog.items[copy]["image_ids"][0])
        vectors.append(v / np.linalg.norm(v))
    embed(catalog, ids, np.stack(vectors).astype(np.float32))
    publish(catalog, sorted(catalog.vectors))
    return catalog


def _scan(client: FlaskClient, auth: dict[str, str], body: dict | None = None) -> dict:
    """Start a scan through the API and wait for its job (the in-process worker runs it)."""
    response = client.post("/api/v1/duplicates/scans", json=body or {}, headers=auth)
    assert response.status_code == 202, response.json
    job = response.json["job"]
    assert job["kind"] == "duplicates" and response.headers["Location"] == f"/api/v1/jobs/{job['id']}"
    deadline = time.monotonic() + 60
    while job["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
        job = client.get(f"/api/v1/jobs/{job['id']}", headers=auth).json
    assert job["status"] == "succeeded", job
    return job


def test_lists_the_planted_copies_as_core_finds_them(planted: Catalog, client: FlaskClient,
                                                     auth: dict[str, str]) -> None:
    job = _scan(client, auth)
    assert job["progress"]["phase"] == "verifying" and job["progress"]["done"] == job["progress"]["total"]
    response = client.get("/api/v1/duplicates", headers=auth)
    assert response.status_code == 200, response.json
    body = response.json
    scan = body.pop("scan")
    assert scan["job_id"] == job["id"] and scan["finished_at"] == job["finished_at"]
    assert scan["index_version"] == scan["active_index_version"] == planted.index_version and not scan["stale"]
    assert job["result"] == body  # the full report is the job's result
    expected = report_to_dict(find_duplicates_with(planted.settings, planted.sessions), 100)
    # the first scan computed every photo's signature and stored it; the second decoded none
    assert body["signatures_computed"] == len(planted.vectors) and expected["signatures_computed"] == 0
    assert {**body, "signatures_computed": 0} == expected
    assert {tuple(g["items"]) for g in body["groups"]} == {tuple(sorted(p)) for p in COPIES.items()}
    assert body["calibrated"] and body["index_version"] == planted.index_version
    assert body["images"] == len(planted.vectors)
    owner = planted.item_of_image()
    for group in body["groups"]:
        pair = group["pairs"][0]
        assert {owner[pair["image_a"]], owner[pair["image_b"]]} == set(group["items"])
        assert pair["distance"] < body["threshold"] and pair["similarity"] >= body["min_similarity"]
    assert body["min_similarity"] == planted.settings.duplicate_min_similarity and body["candidates"] > len(COPIES)


def test_threshold_and_limit(planted: Catalog, client: FlaskClient, auth: dict[str, str]) -> None:
    _scan(client, auth, {"threshold": 0})
    none = client.get("/api/v1/duplicates", headers=auth).json
    assert none["groups"] == [] and none["threshold"] == 0 and not none["calibrated"]
    everything = _scan(client, auth, {"threshold": 5, "min_similarity": -1})
    one = client.get("/api/v1/duplicates", query_string={"limit": "1"}, headers=auth).json
    assert one["scan"]["job_id"] == everything["id"]  # the newest scan is served
    assert one["group_count"] == 1 and len(one["groups"][0]["items"]) == len(planted.items)
    _scan(client, auth)
    two = client.get("/api/v1/duplicates", query_string={"limit": "2"}, headers=auth).json
    assert two["group_count"] == 3 and len(two["groups"]) == 2


@pytest.mark.parametrize("body", [{"threshold": -1}, {"threshold": "nan"}, {"threshold": 1e300},
                                  {"threshold": "x"}, {"ratio": 0}, {"colour": "red"}, {"ratio": True},
                                  {"min_similarity": 1.5}, {"min_similarity": -2}])
def test_bad_scan_bodies_are_400_naming_them(planted: Catalog, client: FlaskClient, auth: dict[str, str],
                                             body: dict) -> None:
    response = client.post("/api/v1/duplicates/scans", json=body, headers=auth)
    assert response.status_code == 400
    assert next(iter(body)) in response.json["error"]["message"]
    assert client.get("/api/v1/jobs", query_string={"kind": "duplicates"}, headers=auth).json["jobs"] == []


@pytest.mark.parametrize("query", [{"limit": "0"}, {"threshold": "0.1"}])
def test_bad_get_parameters_are_400_naming_them(planted: Catalog, client: FlaskClient, auth: dict[str, str],
                                                query: dict[str, str]) -> None:
    response = client.get("/api/v1/duplicates", query_string=query, headers=auth)
    assert response.status_code == 400
    assert next(iter(query)) in response.json["error"]["message"]


def test_scans_need_a_write_key(planted: Catalog, client: FlaskClient) -> None:
    response = client.post("/api/v1/duplicates/scans", json={})
    assert response.status_code == 401


def test_no_scan_yet_is_404_saying_how_to_start_one(planted: Catalog, client: FlaskClient,
                                                    auth: dict[str, str]) -> None:
    response = client.get("/api/v1/duplicates", headers=auth)
    assert response.status_code == 404
    assert response.json["error"]["code"] == "not_found"
    assert "POST /api/v1/duplicates/scans" in response.json["error"]["message"]


def test_a_scan_of_a_replaced_index_is_flagged_stale(planted: Catalog, client: FlaskClient,
                                                     auth: dict[str, str]) -> None:
    _scan(client, auth)
    scanned = planted.index_version
    assert not client.get("/api/v1/duplicates", headers=auth).json["scan"]["stale"]
    newer = publish(planted, sorted(planted.vectors))  # a new version, the same vectors
    body = client.get("/api/v1/duplicates", headers=auth).json
    assert body["scan"]["stale"] and body["scan"]["index_version"] == body["index_version"] == scanned
    assert body["scan"]["active_index_version"] == newer != scanned
    assert len(body["groups"]) == len(COPIES)  # still served, flagged


def test_no_active_index_is_409(tmp_path: Path, settings: Settings, sqlite_engine: object) -> None:
    settings = settings.replace(database_url=settings.resolved_database_url)
    key, _ = create_key(make_session_factory(sqlite_engine), "tests")  # type: ignore[arg-type]
    app = create_app(settings)
    try:
        response = app.test_client().get("/api/v1/duplicates", headers={"Authorization": f"Bearer {key}"})
        started = app.test_client().post("/api/v1/duplicates/scans", json={},
                                         headers={"Authorization": f"Bearer {key}"})
    finally:
        app.extensions["lookalike"].close()
    assert response.status_code == 409 and started.status_code == 409
    assert response.json["error"]["code"] == started.json["error"]["code"] == "index_unavailable"


def test_review_page_shows_each_group_with_its_photos(planted: Catalog, client: FlaskClient,
                                                      auth: dict[str, str]) -> None:
    assert "no near-duplicate scan has run yet" in client.get("/duplicates").get_data(as_text=True)
    job = _scan(client, auth)
    page = client.get("/duplicates")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert html.count('class="duplicate-group"') == len(COPIES)
    for original, copy in COPIES.items():
        assert f'href="/items/{original}"' in html and f'href="/items/{copy}"' in html
    assert html.count('class="thumb"') == 2 * len(COPIES)
    assert f"job {job['id']}" in html
    assert 'href="/duplicates"' in client.get("/").get_data(as_text=True)  # linked from the nav


def test_review_page_without_an_index_says_so(tmp_path: Path, settings: Settings, sqlite_engine: object) -> None:
    app = create_app(settings.replace(database_url=settings.resolved_database_url))
    try:
        page = app.test_client().get("/duplicates")
    finally:
        app.extensions["lookalike"].close()
    assert page.status_code == 200 and "no index is published" in page.get_data(as_text=True)


def test_a_deleted_item_leaves_its_group(planted: Catalog, client: FlaskClient, auth: dict[str, str]) -> None:
    with session_scope(planted.sessions) as s:
        delete_items(s, ["copy-a"])
    _scan(client, auth, {"threshold": 0.01})
    body = client.get("/api/v1/duplicates", headers=auth).json
    assert {tuple(g["items"]) for g in body["groups"]} == {("copy-b", "sku-040"), ("copy-c", "sku-041")}
    assert body["images"] == len(planted.vectors) - 1
