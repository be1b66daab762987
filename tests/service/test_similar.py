"""GET /items/{id}/similar against a brute-force reference; filters, widening, grouping, freshness.

The reference searches with every embedded photo of the query item (best distance over
all photo pairs, tests/service/item_reference.py); tests/service/test_similar_photos.py
covers that rule on purpose-built geometry.
"""

from __future__ import annotations

import numpy as np
import pytest
from flask.testing import FlaskClient

from core.db import Item, ItemStatus, session_scope
from service.app import create_app
from tests.service.item_reference import brute_force_item
from tests.service.support import Catalog, add_items, embed, unit_rows


def query_vector(cat: Catalog, external_id: str) -> np.ndarray:
    """The vector of the item's first photo (a one-photo item's only query vector)."""
    return cat.vectors[cat.items[external_id]["image_ids"][0]]


def similar(client: FlaskClient, external_id: str, **params) -> dict:
    response = client.get(f"/api/v1/items/{external_id}/similar", query_string=params)
    assert response.status_code == 200, response.json
    return response.json


def test_results_match_brute_force_grouped_by_item(client: FlaskClient, catalog: Catalog) -> None:
    for ext in ("sku-001", "sku-017", "sku-042"):
        body = similar(client, ext, k=10)
        expected = brute_force_item(catalog, ext, k=10)
        got = [(r["external_id"], r["image_id"]) for r in body["results"]]
        assert got == [(e, i) for e, i, _ in expected]
        for r, (_, _, d) in zip(body["results"], expected):
            assert r["distance"] == pytest.approx(d, abs=1e-4)
            assert r["score"] == pytest.approx(1 - d * d / 2, abs=1e-4)
        assert len({r["external_id"] for r in body["results"]}) == 10  # one row per item
        assert ext not in {r["external_id"] for r in body["results"]}
        assert body["index_version"] == catalog.index_version
        assert body["model_version"] == catalog.model_version
        assert body["count"] == 10 and body["k"] == 10 and body["took_ms"] >= 0


def test_result_fields_and_image_urls(client: FlaskClient, catalog: Catalog) -> None:
    body = similar(client, "sku-005", k=3)
    first = body["results"][0]
    assert set(first) == {"external_id", "title", "category", "group", "attributes", "score", "distance",
                          "image_id", "image_url"}
    assert first["attributes"] == catalog.items[first["external_id"]]["attributes"]
    image = client.get(first["image_url"])
    assert image.status_code == 200 and image.mimetype == "image/png"
    assert image.data.startswith(b"\x89PNG")


def test_server_timing_splits_the_request(client: FlaskClient) -> None:
    response = client.get("/api/v1/items/sku-003/similar?k=5")
    phases = dict(part.strip().split(";dur=") for part in response.headers["Server-Timing"].split(","))
    assert {"index", "meta", "ser", "app"} <= set(phases)
    assert float(phases["app"]) >= float(phases["index"]) + float(phases["meta"])


def test_category_filter_widens_until_k_items(client: FlaskClient, catalog: Catalog) -> None:
    hats = {ext for ext, item in catalog.items.items() if item["category"] == "hats"}
    assert len(hats) == 4  # rare: 4 of 80, so the first fetch cannot find them all
    body = similar(client, "sku-002", k=3, category="hats")
    expected = brute_force_item(catalog, "sku-002", k=3, allowed=hats)
    assert [r["external_id"] for r in body["results"]] == [e for e, _, _ in expected]
    # asking for more than exist returns all of them, not an error
    body = similar(client, "sku-002", k=10, category="hats")
    assert {r["external_id"] for r in body["results"]} == hats


def test_attribute_filters_and_of_ors(client: FlaskClient, catalog: Catalog) -> None:
    body = similar(client, "sku-010", k=50, category=["shoes", "bags"], attr=["color:red", "color:blue", "size:38"])
    allowed = {ext for ext, item in catalog.items.items()
               if item["category"] in {"shoes", "bags"} and item["attributes"]["color"] in {"red", "blue"}
               and item["attributes"]["size"] == 38} - {"sku-010"}
    assert allowed  # the filter keeps something
    assert {r["external_id"] for r in body["results"]} == allowed
    body = similar(client, "sku-010", k=50, attr="sale:true")
    assert {r["external_id"] for r in body["results"]} == {
        ext for ext, item in catalog.items.items() if item["attributes"]["sale"]} - {"sku-010"}


def test_exclude_group(client: FlaskClient, catalog: Catalog) -> None:
    group = catalog.items["sku-005"]["group"]
    body = similar(client, "sku-005", k=20, exclude_group="true")
    assert all(r["group"] != group for r in body["results"])
    siblings = {ext for ext, item in catalog.items.items() if item["group"] == group} - {"sku-005"}
    expected = brute_force_item(catalog, "sku-005", k=20, exclude=siblings)
    assert [r["external_id"] for r in body["results"]] == [e for e, _, _ in expected]


def test_deleted_item_disappears_at_once(client: FlaskClient, catalog: Catalog) -> None:
    nearest = similar(client, "sku-020", k=1)["results"][0]["external_id"]
    with session_scope(catalog.sessions) as s:
        s.query(Item).filter(Item.external_id == nearest).update({Item.status: ItemStatus.DELETED})
    body = similar(client, "sku-020", k=10)
    assert nearest not in {r["external_id"] for r in body["results"]}
    expected = brute_force_item(catalog, "sku-020", k=10, exclude={nearest})
    assert [r["external_id"] for r in body["results"]] == [e for e, _, _ in expected]
    assert client.get(f"/api/v1/items/{nearest}/similar").status_code == 404


def test_fresh_items_are_found_before_a_rebuild(app, client: FlaskClient, catalog: Catalog) -> None:
    add_items(catalog, [{"external_id": "new-1", "category": "bags", "group": "gx"}], seed_base=9000)
    image_id = catalog.items["new-1"]["image_ids"][0]
    # a vector right next to sku-030's (its only photo): it must come first among sku-030's neighbours
    target = query_vector(catalog, "sku-030")
    near = target + 0.01 * unit_rows(np.random.default_rng(1), 1)[0]
    embed(catalog, [image_id], (near / np.linalg.norm(near))[None, :])
    app.extensions["lookalike"].searcher.refresh_now()
    body = similar(client, "sku-030", k=5)
    assert body["results"][0]["external_id"] == "new-1"
    assert body["index_version"] == catalog.index_version  # no rebuild happened
    expected = brute_force_item(catalog, "sku-030", k=5)
    assert [r["external_id"] for r in body["results"]] == [e for e, _, _ in expected]
    # and the fresh item can be the query too
    assert similar(client, "new-1", k=1)["results"][0]["external_id"] == "sku-030"


def test_item_without_vector_is_409(client: FlaskClient, catalog: Catalog) -> None:
    add_items(catalog, [{"external_id": "unembedded", "category": "bags"}], seed_base=9100)
    response = client.get("/api/v1/items/unembedded/similar")
    assert response.status_code == 409
    assert response.json["error"]["code"] == "not_embedded"


@pytest.mark.parametrize("k", ["0", "-1", "51", "abc", "1.5", ""])
def test_bad_k_is_400(client: FlaskClient, k: str) -> None:
    response = client.get(f"/api/v1/items/sku-001/similar?k={k}")
    assert response.status_code == 400
    assert response.json["error"]["code"] == "invalid_parameter"
    assert "k" in response.json["error"]["message"]


def test_unknown_id_is_404_and_unknown_filter_is_400(client: FlaskClient) -> None:
    response = client.get("/api/v1/items/no-such-sku/similar")
    assert response.status_code == 404 and response.json["error"]["code"] == "not_found"
    response = client.get("/api/v1/items/sku-001/similar?colour=red")
    assert response.status_code == 400 and "colour" in response.json["error"]["message"]
    response = client.get("/api/v1/items/sku-001/similar?attr=color")
    assert response.status_code == 400 and response.json["error"]["code"] == "invalid_filter"
    response = client.get("/api/v1/items/sku-001/similar?attr=bad%20name:x")
    assert response.status_code == 400


def test_no_index_yet_is_503(service_settings, service_sessions) -> None:
    app = create_app(service_settings.replace(database_url=service_settings.resolved_database_url))
    try:
        response = app.test_client().get("/api/v1/items/x/similar")
        assert response.status_code == 503 and response.json["error"]["code"] == "index_unavailable"
    finally:
        app.extensions["lookalike"].close()
