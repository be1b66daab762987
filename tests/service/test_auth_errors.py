"""API keys, read access, JSON errors everywhere on the API, request ids in responses and logs."""

from __future__ import annotations

import logging

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from core.db import ApiKey, session_scope
from service.apikeys import ApiKeyError, create_key, hash_key, list_keys, revoke_key
from service.app import create_app
from service.requestlog import RequestIdFilter
from tests.service.support import Catalog


def test_keys_are_stored_hashed(catalog: Catalog) -> None:
    key, info = create_key(catalog.sessions, "shop")
    assert key.startswith(info.prefix + "_") and len(key) > 40
    with session_scope(catalog.sessions) as s:
        row = s.scalar(select(ApiKey).where(ApiKey.name == "shop"))
        assert row.key_hash == hash_key(key) and key not in (row.key_hash, row.prefix)
    with pytest.raises(ApiKeyError, match="already exists"):
        create_key(catalog.sessions, "shop")
    assert [k.name for k in list_keys(catalog.sessions)] == ["shop"]


def test_revoked_key_is_refused(catalog: Catalog) -> None:
    key, _ = create_key(catalog.sessions, "temp")
    revoke_key(catalog.sessions, "temp")
    app = create_app(catalog.settings)
    try:
        response = app.test_client().post("/api/v1/reindex", headers={"X-API-Key": key})
        assert response.status_code == 401
    finally:
        app.extensions["lookalike"].close()
    with pytest.raises(ApiKeyError, match="no key"):
        revoke_key(catalog.sessions, "never")


def test_bootstrap_admin_key(catalog: Catalog) -> None:
    app = create_app(catalog.settings.replace(admin_api_key="s3cret-bootstrap-key"))
    try:
        client = app.test_client()
        # The key is accepted: the request gets past auth to the job runner, which this test app lacks.
        response = client.post("/api/v1/retrain", headers={"Authorization": "Bearer s3cret-bootstrap-key"})
        assert response.status_code == 503 and response.json["error"]["code"] == "broker_unavailable"
        assert client.post("/api/v1/retrain", headers={"Authorization": "Bearer s3cret"}).status_code == 401
    finally:
        app.extensions["lookalike"].close()


def test_private_reads_need_a_key(catalog: Catalog, api_key: str) -> None:
    app = create_app(catalog.settings.replace(reads_public=False))
    try:
        client = app.test_client()
        for url in ("/api/v1/items", "/api/v1/items/sku-001", "/api/v1/items/sku-001/similar", "/api/v1/jobs",
                    "/api/v1/models", "/api/v1/indexes"):
            assert client.get(url).status_code == 401, url
            assert client.get(url, headers={"X-API-Key": api_key}).status_code == 200, url
        assert client.post("/api/v1/search", json={"vector": [1.0] * 32}).status_code == 401
        ui = client.get("/")
        assert ui.status_code == 401 and ui.mimetype == "text/html"
        assert client.get("/healthz").status_code == 200
        spec = client.get("/api/v1/openapi.json").json
        assert spec["paths"]["/api/v1/items"]["get"]["security"] == [{"bearerKey": []}, {"headerKey": []}]
    finally:
        app.extensions["lookalike"].close()


def test_api_errors_are_json_and_ui_errors_html(client: FlaskClient) -> None:
    response = client.get("/api/v1/no/such/thing")
    assert response.status_code == 404 and response.mimetype == "application/json"
    assert response.json["error"]["code"] == "not_found"
    response = client.patch("/api/v1/items/sku-001")
    assert response.status_code == 405 and response.json["error"]["code"] == "method_not_allowed"
    assert {"GET", "PUT", "DELETE"} <= {m.strip() for m in response.headers["Allow"].split(",")}
    response = client.get("/no/such/page")
    assert response.status_code == 404 and response.mimetype == "text/html"


def test_unexpected_errors_are_json_500_with_request_id(catalog: Catalog, caplog: pytest.LogCaptureFixture) -> None:
    app = create_app(catalog.settings)
    try:
        @app.get("/api/v1/boom")
        def boom() -> str:
            raise RuntimeError("kaboom")

        with caplog.at_level(logging.ERROR):
            response = app.test_client().get("/api/v1/boom", headers={"X-Request-ID": "req-42"})
        assert response.status_code == 500 and response.mimetype == "application/json"
        assert response.json["error"] == {"code": "internal", "request_id": "req-42",
                                          "message": "internal error; the request id identifies it in the server log"}
        assert "kaboom" not in response.get_data(as_text=True)
        logged = [r for r in caplog.records if "unhandled error" in r.getMessage()]
        assert logged and logged[0].request_id == "req-42"
    finally:
        app.extensions["lookalike"].close()


def test_request_ids(client: FlaskClient, caplog: pytest.LogCaptureFixture) -> None:
    assert client.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"] == "abc-123"
    minted = client.get("/healthz", headers={"X-Request-ID": "bad id; with spaces"}).headers["X-Request-ID"]
    assert len(minted) == 32 and minted.isalnum()
    with caplog.at_level(logging.INFO, logger="service"):
        response = client.get("/api/v1/items/nope", headers={"X-Request-ID": "trace-7"})
    assert response.json["error"]["request_id"] == "trace-7"
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "outside", None, None)
    assert RequestIdFilter().filter(record) and record.request_id == "-"
