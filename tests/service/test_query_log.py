"""Similar-by-id requests are logged (sampled, bounded) for the shadow evaluation; logging never fails one."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from core.db import QueryLog, session_scope
from service.app import create_app
from tests.service.support import Catalog


def _get(client: FlaskClient, path: str, **params: object) -> int:
    """GET and close the response, as a WSGI server does once it is sent: the log is written then."""
    response = client.get(path, query_string=params)
    response.close()
    return response.status_code


@contextmanager
def _client(catalog: Catalog, **settings: object) -> Iterator[FlaskClient]:
    app = create_app(catalog.settings.replace(**settings), watch_index=False)
    try:
        yield app.test_client()
    finally:
        app.extensions["lookalike"].close()


def _logged(catalog: Catalog) -> list[tuple[str, int]]:
    with session_scope(catalog.sessions) as s:
        return [tuple(r) for r in s.execute(select(QueryLog.external_id, QueryLog.k).order_by(QueryLog.id))]


def test_every_sampled_request_is_logged_and_the_log_is_bounded(catalog: Catalog) -> None:
    with _client(catalog, query_log_sample_rate=1.0, query_log_max_rows=4) as client:
        for n in range(6):
            assert _get(client, f"/api/v1/items/sku-{n:03d}/similar", k=3 + n) == 200
        assert _get(client, "/api/v1/items/sku-999/similar") == 404  # no answer, nothing logged
    assert _logged(catalog) == [(f"sku-{n:03d}", 3 + n) for n in range(2, 6)]


def test_nothing_is_logged_at_rate_zero_and_about_the_rate_otherwise(catalog: Catalog) -> None:
    with _client(catalog, query_log_sample_rate=0.0) as client:
        for _ in range(20):
            assert _get(client, "/api/v1/items/sku-001/similar") == 200
    assert _logged(catalog) == []
    with _client(catalog, query_log_sample_rate=0.5) as client:
        for _ in range(200):
            assert _get(client, "/api/v1/items/sku-001/similar") == 200
    assert 60 <= len(_logged(catalog)) <= 140  # binomial(200, 0.5): outside this ~1e-8


def test_a_failing_log_never_fails_the_request(catalog: Catalog, caplog: pytest.LogCaptureFixture) -> None:
    with session_scope(catalog.sessions) as s:
        s.connection().exec_driver_sql("DROP TABLE query_log")
    with _client(catalog, query_log_sample_rate=1.0) as client:
        response = client.get("/api/v1/items/sku-001/similar")
        response.close()  # the write runs (and fails) here
    assert response.status_code == 200 and len(response.json["results"]) == 10
    assert "could not log query 'sku-001'" in caplog.text
