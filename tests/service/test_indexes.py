"""Index rollback: `POST /api/v1/indexes/{version}/publish` and `lookalike indexes list|rollback`.

Two models with different vectors for the same catalog, each with its own index: the
rollback must make a live app answer with the old index *and* the old model's
vectors (checked against the brute-force reference), and every refusal must leave
what is served untouched.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from flask.testing import FlaskClient

from cli.main import lookalike
from core.db import IndexStatus, IndexVersion, ModelStatus, session_scope
from core.registry import active_index, get_model
from tests.service.item_reference import brute_force_item
from tests.service.support import Catalog, embed, publish, unit_rows
from tests.worker.support import register_tiny_model


@pytest.fixture
def two(catalog: Catalog) -> tuple[Catalog, Catalog]:
    """The catalog's index (model m-test-0) superseded by a second model's index (m-test-1)."""
    second = Catalog(settings=catalog.settings, sessions=catalog.sessions, items=catalog.items,
                     model_version=register_tiny_model(catalog.settings, catalog.sessions, seed=1, activate=False))
    ids = sorted(catalog.vectors)
    embed(second, ids, unit_rows(np.random.default_rng(99), len(ids)))
    publish(second, ids)
    return catalog, second


def similar(client: FlaskClient, external_id: str = "sku-011") -> dict:
    response = client.get(f"/api/v1/items/{external_id}/similar", query_string={"k": 8})
    assert response.status_code == 200, response.json
    return response.json


def assert_serves(client: FlaskClient, cat: Catalog) -> None:
    """The app answers from ``cat``'s index with ``cat``'s model, exactly as brute force does."""
    for ext in ("sku-011", "sku-042"):
        body = similar(client, ext)
        assert (body["index_version"], body["model_version"]) == (cat.index_version, cat.model_version)
        expected = brute_force_item(cat, ext, k=8)
        assert [(r["external_id"], r["image_id"]) for r in body["results"]] == [(e, i) for e, i, _ in expected]


def test_rollback_over_the_api_swaps_the_served_index_and_model(client: FlaskClient, two, auth: dict) -> None:
    old, new = two
    assert_serves(client, new)
    assert brute_force_item(old, "sku-011", k=8) != brute_force_item(new, "sku-011", k=8)
    response = client.post(f"/api/v1/indexes/{old.index_version}/publish", headers=auth)
    assert response.status_code == 200, response.json
    index = response.json["index"]
    assert (index["version"], index["status"], index["model_version"]) == (old.index_version, "active",
                                                                           old.model_version)
    assert index["served_here"] is True
    assert_serves(client, old)
    # the model that had been superseded (status retired) is the active one again
    assert get_model(old.sessions, old.model_version).status is ModelStatus.ACTIVE
    assert get_model(old.sessions, new.model_version).status is ModelStatus.RETIRED
    rows = {r["version"]: r for r in client.get("/api/v1/indexes").json["indexes"]}
    assert (rows[old.index_version]["status"], rows[old.index_version]["served_here"]) == ("active", True)
    assert (rows[new.index_version]["status"], rows[new.index_version]["served_here"]) == ("ready", False)
    # and forward again: republishing is the same operation
    assert client.post(f"/api/v1/indexes/{new.index_version}/publish", json={}, headers=auth).status_code == 200
    assert_serves(client, new)


def refused(client: FlaskClient, version: str, auth: dict, status: int) -> dict:
    response = client.post(f"/api/v1/indexes/{version}/publish", headers=auth)
    assert response.status_code == status, response.json
    assert response.mimetype == "application/json"
    return response.json["error"]


def test_refusals_leave_the_served_index_alone(client: FlaskClient, two, auth: dict) -> None:
    old, new = two
    assert_serves(client, new)
    missing = refused(client, "i-nope", auth, 404)
    assert missing["code"] == "not_found" and "'i-nope' does not exist" in missing["message"]
    assert client.post(f"/api/v1/indexes/{old.index_version}/publish").status_code == 401
    assert refused(client, old.index_version, {"X-API-Key": "lk_wrong"}, 401)["code"] == "unauthorized"
    body = client.post(f"/api/v1/indexes/{old.index_version}/publish", json={"force": True}, headers=auth)
    assert body.status_code == 400 and "'force'" in body.json["error"]["message"]

    checkpoint = old.settings.models_dir / f"{old.model_version}.pt"
    moved = checkpoint.with_suffix(".away")
    checkpoint.rename(moved)
    error = refused(client, old.index_version, auth, 409)
    assert error["details"] == {"reason": "model_missing", "version": old.index_version}
    assert old.model_version in error["message"] and str(old.settings.home) not in error["message"]
    moved.rename(checkpoint)

    directory = old.settings.indexes_dir / old.index_version
    shutil.rmtree(directory)
    error = refused(client, old.index_version, auth, 409)
    assert error["code"] == "conflict" and error["details"]["reason"] == "files_missing"
    assert error["message"] == (f"index {old.index_version} cannot be published: index directory not found: "
                                f"<indexes>/{old.index_version}")

    with session_scope(old.sessions) as s:
        s.query(IndexVersion).filter_by(version=old.index_version).update({"status": IndexStatus.RETIRED})
    error = refused(client, old.index_version, auth, 409)
    assert error["details"]["reason"] == "not_ready" and "retired" in error["message"]

    assert active_index(old.sessions).version == new.index_version
    assert get_model(old.sessions, new.model_version).status is ModelStatus.ACTIVE
    assert_serves(client, new)


def test_a_corrupt_index_file_is_refused(client: FlaskClient, two, auth: dict) -> None:
    old, new = two
    ann = old.settings.indexes_dir / old.index_version / "index.ann"
    data = bytearray(ann.read_bytes())
    data[len(data) // 2] ^= 0xFF
    ann.write_bytes(bytes(data))
    error = refused(client, old.index_version, auth, 409)
    assert error["details"]["reason"] == "files_corrupt" and "checksum of index.ann" in error["message"]
    assert active_index(old.sessions).version == new.index_version


def cli(cat: Catalog, *args: str):  # type: ignore[no-untyped-def]
    env = {"LOOKALIKE_HOME": str(cat.settings.home), "LOOKALIKE_DATABASE_URL": cat.settings.resolved_database_url}
    return CliRunner().invoke(lookalike, list(args), env=env, catch_exceptions=False)


def listed(cat: Catalog) -> dict[str, list[str]]:
    """`indexes list` as {version: [marker, status, model, images]}."""
    result = cli(cat, "indexes", "list")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:4] == ["version", "status", "model", "images"]
    rows = {}
    for line in lines[1:]:
        fields = line[2:].split()
        rows[fields[0]] = [line[0], *fields[1:4]]
    return rows


def test_rollback_from_the_cli_is_picked_up_by_a_running_app(client: FlaskClient, two) -> None:
    old, new = two
    images = str(len(old.vectors))
    assert listed(old) == {new.index_version: ["*", "active", new.model_version, images],
                           old.index_version: [" ", "ready", old.model_version, images]}
    assert_serves(client, new)  # the app's searcher is running, polling every 0.2 s
    result = cli(old, "indexes", "rollback", old.index_version)
    assert result.exit_code == 0, result.output
    assert f"published index {old.index_version} (model {old.model_version})" in result.output
    deadline = time.monotonic() + 10
    while similar(client)["index_version"] != old.index_version:
        assert time.monotonic() < deadline, "the app never swapped to the rolled-back index"
        time.sleep(0.1)
    assert_serves(client, old)
    assert listed(old)[old.index_version][:2] == ["*", "active"]

    shutil.rmtree(Path(old.settings.indexes_dir / new.index_version))
    result = cli(old, "indexes", "rollback", new.index_version)
    assert result.exit_code == 1
    assert f"index {new.index_version} cannot be published: index directory not found" in result.output
    missing = cli(old, "indexes", "rollback", "i-nope")
    assert missing.exit_code == 1 and "'i-nope' does not exist" in missing.output
    assert active_index(old.sessions).version == old.index_version
