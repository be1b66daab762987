"""POST /search by vector, by uploaded image and by URL; the body checks that guard it."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image
from sqlalchemy import select

from core.db import ItemImage, session_scope
from core.embedding import Embedder
from tests.service.support import Catalog, brute_force, embed, png_bytes, publish


def test_vector_search_matches_brute_force(client: FlaskClient, catalog: Catalog) -> None:
    query = np.random.default_rng(3).normal(size=32)
    response = client.post("/api/v1/search", json={"vector": query.tolist(), "k": 7})
    assert response.status_code == 200, response.json
    unit = query / np.linalg.norm(query)  # the server normalises the query
    expected = brute_force(catalog, unit, k=7)
    assert [r["external_id"] for r in response.json["results"]] == [e for e, _, _ in expected]
    assert response.json["query"] == {"kind": "vector", "filters": {}}


def test_vector_search_with_json_filters(client: FlaskClient, catalog: Catalog) -> None:
    query = np.random.default_rng(4).normal(size=32)
    filters = {"category": ["bags"], "attributes": {"color": ["green", "black"], "sale": [False]}}
    response = client.post("/api/v1/search", json={"vector": query.tolist(), "k": 50, "filters": filters})
    assert response.status_code == 200, response.json
    allowed = {ext for ext, it in catalog.items.items() if it["category"] == "bags"
               and it["attributes"]["color"] in {"green", "black"} and not it["attributes"]["sale"]}
    assert {r["external_id"] for r in response.json["results"]} == allowed


@pytest.mark.parametrize("body, status, code", [
    ({"vector": [1.0] * 31}, 400, "invalid_parameter"),
    ({"vector": [0.0] * 32}, 400, "invalid_parameter"),
    ({"vector": ["a"] * 32}, 400, "invalid_parameter"),
    ({"vector": [1.0] * 32, "k": 0}, 400, "invalid_parameter"),
    ({"vector": [1.0] * 32, "k": "5"}, 400, "invalid_parameter"),
    ({"vector": [1.0] * 32, "filters": {"colour": ["red"]}}, 400, "invalid_filter"),
    ({"vector": [1.0] * 32, "filters": {"category": "bags"}}, 400, "invalid_filter"),
    ({"vector": [1.0] * 32, "image_url": "http://x"}, 400, "bad_request"),
    ({}, 400, "bad_request"),
    ({"vector": [1.0] * 32, "extra": 1}, 400, "bad_request"),
    ({"image_url": "http://example.com/a.jpg"}, 403, "url_fetch_disabled"),
])
def test_bad_json_bodies(client: FlaskClient, body: dict, status: int, code: str) -> None:
    response = client.post("/api/v1/search", json=body)
    assert response.status_code == status, response.json
    assert response.json["error"]["code"] == code


def test_wrong_content_type_is_415_and_bad_json_is_400(client: FlaskClient) -> None:
    response = client.post("/api/v1/search", data=b"<xml/>", content_type="application/xml")
    assert response.status_code == 415 and response.json["error"]["code"] == "unsupported_media_type"
    response = client.post("/api/v1/search", data=b"{not json", content_type="application/json")
    assert response.status_code == 400
    response = client.post("/api/v1/search", data=b"[1, 2]", content_type="application/json")
    assert response.status_code == 400


def upload(client: FlaskClient, data: bytes, **fields) -> "object":
    form = {"image": (io.BytesIO(data), "photo.png"), **fields}
    return client.post("/api/v1/search", data=form, content_type="multipart/form-data")


def test_image_search_embeds_with_the_index_model(app: Flask, client: FlaskClient, catalog: Catalog) -> None:
    # index real model embeddings of the catalog's photos, so an upload of one of them finds its item
    embedder = Embedder.from_checkpoint(catalog.settings.models_dir / f"{catalog.model_version}.pt")
    store = app.extensions["lookalike"].media
    ids = [image_id for item in catalog.items.values() for image_id in item["image_ids"]]
    keys = _media_keys(catalog, ids)
    images = [store.open(keys[i]) for i in ids]
    embed(catalog, ids, embedder.embed(images))
    publish(catalog, ids)
    app.extensions["lookalike"].searcher.refresh_now()
    target = catalog.items["sku-033"]["image_ids"][0]
    response = upload(client, store.path(keys[target]).read_bytes(), k="3")
    assert response.status_code == 200, response.json
    assert response.json["results"][0]["external_id"] == "sku-033"
    assert response.json["results"][0]["distance"] == pytest.approx(0.0, abs=1e-3)
    assert response.json["query"]["kind"] == "image"
    phases = {p.split(";")[0].strip() for p in response.headers["Server-Timing"].split(",")}
    assert {"decode", "embed", "index", "meta", "ser", "app"} <= phases


def _media_keys(catalog: Catalog, ids: list[int]) -> dict[int, str]:
    with session_scope(catalog.sessions) as s:
        rows = s.execute(select(ItemImage.id, ItemImage.media_key).where(ItemImage.id.in_(ids)))
        return {image_id: key for image_id, key in rows}


def test_corrupt_and_non_images_are_400(client: FlaskClient) -> None:
    good = png_bytes(1)
    response = upload(client, good[: len(good) // 2])
    assert response.status_code == 400 and response.json["error"]["code"] == "invalid_image"
    assert response.json["error"]["details"]["reason"] == "truncated"
    response = upload(client, b"%PDF-1.4 not an image at all")
    assert response.status_code == 400 and response.json["error"]["details"]["reason"] == "not_an_image"


def test_decompression_bomb_is_refused(client: FlaskClient, catalog: Catalog) -> None:
    # a tiny PNG that claims more pixels than the limit allows
    buffer = io.BytesIO()
    Image.new("L", (8000, 8000)).save(buffer, format="PNG", optimize=True)
    assert len(buffer.getvalue()) < 200_000
    assert 8000 * 8000 > catalog.settings.max_image_pixels  # the bomb is over the pixel limit, under the byte cap
    response = upload(client, buffer.getvalue())
    assert response.status_code == 400 and response.json["error"]["details"]["reason"] == "too_many_pixels"


def test_oversized_upload_is_413(app: Flask, catalog: Catalog) -> None:
    cap = app.extensions["lookalike"].settings.max_image_bytes
    response = app.test_client().post(
        "/api/v1/search", data={"image": (io.BytesIO(b"\0" * (cap + 200_000)), "big.png")},
        content_type="multipart/form-data")
    assert response.status_code == 413 and response.json["error"]["code"] == "payload_too_large"


def test_multipart_fields_are_checked(client: FlaskClient) -> None:
    response = upload(client, png_bytes(2), k="500")
    assert response.status_code == 400 and "k" in response.json["error"]["message"]
    response = upload(client, png_bytes(2), filters="{broken")
    assert response.status_code == 400 and response.json["error"]["code"] == "invalid_filter"
    response = upload(client, png_bytes(2), colour="red")
    assert response.status_code == 400
    response = client.post("/api/v1/search", data={"k": "3"}, content_type="multipart/form-data")
    assert response.status_code == 400 and "image" in response.json["error"]["message"]


def test_filters_in_multipart_are_json(client: FlaskClient, catalog: Catalog) -> None:
    response = upload(client, png_bytes(5), k="50", filters=json.dumps({"category": ["hats"]}))
    assert response.status_code == 200, response.json
    assert {r["category"] for r in response.json["results"]} == {"hats"}
