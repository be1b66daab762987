"""Item endpoints: list, get, PUT (multipart and JSON), DELETE, media; writes need a key."""

from __future__ import annotations

import io
import json

import numpy as np
from flask.testing import FlaskClient
from sqlalchemy import select

from core.db import Embedding, Item, ItemImage, ItemStatus, session_scope
from service.app import create_app
from service.celery_client import CeleryDispatcher
from tests.service.support import Catalog, png_bytes


def put_multipart(client: FlaskClient, external_id: str, images: list[bytes], auth: dict, **metadata):
    form: dict = {"image": [(io.BytesIO(data), f"p{i}.png") for i, data in enumerate(images)]}
    if metadata:
        form["metadata"] = json.dumps(metadata)
    return client.put(f"/api/v1/items/{external_id}", data=form, content_type="multipart/form-data",
                      headers=auth)


def test_list_filters_and_paginates(client: FlaskClient, catalog: Catalog) -> None:
    bags = sorted(ext for ext, it in catalog.items.items() if it["category"] == "bags")
    first = client.get("/api/v1/items?category=bags&limit=10").json
    second = client.get("/api/v1/items?category=bags&limit=10&offset=10").json
    assert first["total"] == len(bags)
    assert [i["external_id"] for i in first["items"] + second["items"]] == bags[:20]
    red = client.get("/api/v1/items?attr=color:red&attr=size:36&limit=200").json
    assert {i["external_id"] for i in red["items"]} == {
        ext for ext, it in catalog.items.items()
        if it["attributes"]["color"] == "red" and it["attributes"]["size"] == 36}
    assert client.get("/api/v1/items?limit=0").status_code == 400
    assert client.get("/api/v1/items?limit=201").status_code == 400
    assert client.get("/api/v1/items?sort=title").status_code == 400


def test_get_item(client: FlaskClient, catalog: Catalog) -> None:
    body = client.get("/api/v1/items/sku-002").json
    assert body["external_id"] == "sku-002" and body["category"] == catalog.items["sku-002"]["category"]
    assert [img["id"] for img in body["images"]] == catalog.items["sku-002"]["image_ids"]
    assert client.get(body["images"][0]["url"]).status_code == 200
    missing = client.get("/api/v1/items/nope")
    assert missing.status_code == 404 and missing.json["error"]["code"] == "not_found"


def test_put_creates_an_item_that_is_findable_at_once(client: FlaskClient, catalog: Catalog, auth: dict) -> None:
    response = put_multipart(client, "fresh-1", [png_bytes(77), png_bytes(78)], auth,
                             title="Fresh boots", category="shoes", attributes={"color": "red"})
    assert response.status_code == 201, response.json
    body = response.json
    assert body["title"] == "Fresh boots" and len(body["images"]) == 2
    assert body["embedding"]["queued"] == 2 and body["embedding"]["status"] == "succeeded"
    # embedded in-process before the answer: the item can be searched with its own vector
    with session_scope(catalog.sessions) as s:
        vector = np.frombuffer(s.scalar(select(Embedding.vector).where(
            Embedding.image_id == body["images"][0]["id"])), dtype="<f4")
    found = client.post("/api/v1/search", json={"vector": vector.tolist(), "k": 1}).json
    assert found["results"][0]["external_id"] == "fresh-1"
    assert found["results"][0]["distance"] < 1e-4
    assert client.get("/api/v1/items/fresh-1/similar?k=3").status_code == 200


def test_put_json_updates_metadata_and_keeps_images(client: FlaskClient, catalog: Catalog, auth: dict) -> None:
    response = client.put("/api/v1/items/sku-004", json={"title": "Renamed", "category": "bags",
                                                         "attributes": {"color": "teal"}}, headers=auth)
    assert response.status_code == 200, response.json
    assert response.json["title"] == "Renamed"
    assert [i["id"] for i in response.json["images"]] == catalog.items["sku-004"]["image_ids"]
    assert response.json["embedding"]["queued"] == 0  # nothing new to embed
    assert client.get("/api/v1/items?attr=color:teal").json["total"] == 1


def test_put_replaces_images(client: FlaskClient, catalog: Catalog, auth: dict) -> None:
    old = catalog.items["sku-007"]["image_ids"]
    response = put_multipart(client, "sku-007", [png_bytes(555)], auth)
    assert response.status_code == 200
    assert len(response.json["images"]) == 1 and response.json["images"][0]["id"] not in old
    # the old images no longer show up in results (their vectors stay in the index)
    results = client.get("/api/v1/items/sku-006/similar?k=50").json["results"]
    assert not {r["image_id"] for r in results} & set(old)


def test_put_errors(client: FlaskClient, auth: dict) -> None:
    response = client.put("/api/v1/items/brand-new", json={"title": "no photo"}, headers=auth)
    assert response.status_code == 409
    response = put_multipart(client, "bad-img", [b"GIF89a-this-is-broken"], auth)
    assert response.status_code == 400 and response.json["error"]["code"] == "invalid_image"
    response = client.put("/api/v1/items/x", data="title=x", content_type="application/x-www-form-urlencoded",
                          headers=auth)
    assert response.status_code == 415
    response = client.put("/api/v1/items/x", json={"title": "x", "colour": "red"}, headers=auth)
    assert response.status_code == 400 and "colour" in response.json["error"]["message"]
    response = client.put("/api/v1/items/x", json={"title": 5}, headers=auth)
    assert response.status_code == 400
    response = client.put("/api/v1/items/" + "a" * 256, json={"title": "long id"}, headers=auth)
    assert response.status_code == 400 and response.json["error"]["details"]["parameter"] == "external_id"
    assert "256 characters, more than the 255 allowed" in response.json["error"]["message"]


def test_oversized_item_image_is_413(client: FlaskClient, catalog: Catalog, auth: dict) -> None:
    big = b"\x89PNG\r\n\x1a\n" + b"\0" * (catalog.settings.max_image_bytes + 1)
    response = put_multipart(client, "big", [big], auth)
    assert response.status_code == 413 and response.json["error"]["code"] == "payload_too_large"


def test_delete(client: FlaskClient, catalog: Catalog, auth: dict) -> None:
    assert client.delete("/api/v1/items/sku-009", headers=auth).status_code == 204
    assert client.get("/api/v1/items/sku-009").status_code == 404
    assert client.delete("/api/v1/items/sku-009", headers=auth).status_code == 204  # idempotent
    assert client.delete("/api/v1/items/never-was", headers=auth).status_code == 404
    with session_scope(catalog.sessions) as s:
        assert s.scalar(select(Item.status).where(Item.external_id == "sku-009")) is ItemStatus.DELETED


def test_writes_need_a_valid_key(client: FlaskClient, auth: dict) -> None:
    for method, url in (("put", "/api/v1/items/x"), ("delete", "/api/v1/items/sku-001"),
                        ("post", "/api/v1/reindex"), ("post", "/api/v1/retrain")):
        response = getattr(client, method)(url, json={})
        assert response.status_code == 401, (method, url)
        assert response.json["error"]["code"] == "unauthorized"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        wrong = getattr(client, method)(url, json={}, headers={"X-API-Key": "lk_wrong_key"})
        assert wrong.status_code == 401 and "unknown or revoked" in wrong.json["error"]["message"]
    assert client.delete("/api/v1/items/sku-001", headers={"X-API-Key": auth["Authorization"][7:]}).status_code == 204


def test_media(client: FlaskClient, catalog: Catalog) -> None:
    with session_scope(catalog.sessions) as s:
        key = s.scalar(select(ItemImage.media_key).limit(1))
    response = client.get(f"/api/v1/media/{key}")
    assert response.status_code == 200 and response.mimetype == "image/png"
    assert "immutable" in response.headers["Cache-Control"]
    again = client.get(f"/api/v1/media/{key}", headers={"If-None-Match": f'"{key}"'})
    assert again.status_code == 304
    assert client.get("/api/v1/media/" + "0" * 64).status_code == 404
    assert client.get("/api/v1/media/..%2f..%2fetc%2fpasswd").status_code == 404
    assert client.get("/api/v1/media/not-a-key").status_code == 404


def test_broker_down_saves_the_item_and_answers_503(catalog: Catalog, api_key: str) -> None:
    settings = catalog.settings.replace(broker_url="redis://127.0.0.1:1/0")
    app = create_app(settings, dispatcher=CeleryDispatcher(settings, connect_timeout=0.5))
    try:
        client = app.test_client()
        response = put_multipart(client, "saved-anyway", [png_bytes(4242)], {"X-API-Key": api_key})
        assert response.status_code == 503
        error = response.json["error"]
        assert error["code"] == "broker_unavailable" and error["details"]["saved"] is True
        assert "was saved" in error["message"]
        assert response.headers["Retry-After"]
        assert client.get("/api/v1/items/saved-anyway").status_code == 200
        # repeating the PUT queues the embedding again (and fails the same way, nothing lost)
        again = put_multipart(client, "saved-anyway", [png_bytes(4242)], {"X-API-Key": api_key})
        assert again.status_code == 503
    finally:
        app.extensions["lookalike"].close()


