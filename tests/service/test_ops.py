"""healthz, readyz and /metrics."""

from __future__ import annotations

from flask.testing import FlaskClient

from service.app import create_app
from tests.service.support import Catalog, add_items, new_catalog


def test_healthz(client: FlaskClient) -> None:
    assert client.get("/healthz").json == {"status": "ok"}


def test_readyz_with_an_index(client: FlaskClient, catalog: Catalog) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json["checks"]["index"]["version"] == catalog.index_version


def test_readyz_empty_catalog_is_ready_but_items_without_index_are_not(service_settings, service_sessions) -> None:
    settings = service_settings.replace(database_url=service_settings.resolved_database_url)
    app = create_app(settings)
    try:
        client = app.test_client()
        response = client.get("/readyz")
        assert response.status_code == 200 and response.json["checks"]["index"]["catalog_empty"]
        cat = new_catalog(settings, service_sessions)
        add_items(cat, [{"external_id": "a", "category": "x"}], seed_base=1)
        response = client.get("/readyz")
        assert response.status_code == 503 and response.json["status"] == "unavailable"
        assert response.json["checks"]["index"]["ok"] is False
    finally:
        app.extensions["lookalike"].close()


def test_readyz_database_down(service_settings) -> None:
    settings = service_settings.replace(database_url="postgresql+psycopg://nobody@127.0.0.1:1/none")
    app = create_app(settings)
    try:
        response = app.test_client().get("/readyz")
        assert response.status_code == 503
        assert response.json["checks"]["database"]["ok"] is False
    finally:
        app.extensions["lookalike"].close()


def test_metrics(client: FlaskClient, catalog: Catalog) -> None:
    client.get("/api/v1/items/sku-001/similar?k=3")
    client.post("/api/v1/search", json={"vector": [1.0] * 32})
    text = client.get("/metrics").get_data(as_text=True)
    assert 'lookalike_http_request_duration_seconds_bucket{endpoint="/api/v1/items/<external_id>/similar"' in text
    assert f'lookalike_active_index_info{{index_version="{catalog.index_version}",' \
           f'model_version="{catalog.model_version}"}} 1.0' in text
    assert 'lookalike_queries_total{kind="item"} 1.0' in text
    assert 'lookalike_queries_total{kind="vector"} 1.0' in text
    assert "lookalike_fresh_set_size 0.0" in text
    assert "lookalike_index_images" in text
