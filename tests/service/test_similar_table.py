"""Similar-by-id from the lists + metadata table + live set, on SQLite and PostgreSQL.

A real catalog (items, stored vectors, an index published by the project's code with
exact lists and its metadata table), served by the real app: the table path must give
the same bytes as the SQL path for the same request, a deleted item must never appear
(not even before the watcher's next poll: the probes send that request to SQL), and a
new title must show on the next request, as on the SQL path. The last test does the same
through two real `lookalike serve` processes (gunicorn), table on and off.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
import requests
from alembic import command
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import update

from core.catalog import delete_items
from core.config import Settings
from core.db import FeedbackJudgement, FeedbackSource, Item, make_engine, make_session_factory, session_scope
from core.db.types import utcnow
from core.feedback import Judgement, record_feedback
from migrations import alembic_config
from service.app import create_app
from service.filters import Filters
from service.searcher import Searcher
from service.searcher import live as live_module
from tests.service.conftest import item_specs
from tests.service.live import LiveServer
from tests.service.support import Catalog, add_items, embed, new_catalog, publish, unit_rows

TOOK = re.compile(rb'"took_ms":[0-9.e-]+')


@dataclass
class Served:
    cat: Catalog
    table: Flask
    sql: Flask

    def searcher(self) -> Searcher:
        return self.table.extensions["lookalike"].searcher


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def served(request: pytest.FixtureRequest, tmp_path) -> Iterator[Served]:
    home = tmp_path / "home"
    if request.param == "sqlite":
        url = Settings(home=home).resolved_database_url
    else:
        url = request.getfixturevalue("postgres_server").create_database(f"tab{uuid.uuid4().hex[:12]}")
    command.upgrade(alembic_config(url), "head")
    # a long poll: the watcher never refreshes on its own during a test, the test says when
    settings = Settings(home=home, database_url=url, index_poll_seconds=3600, torch_threads=1, annoy_trees=10,
                        annoy_search_k=100_000, max_k=50, redis_url="")
    engine = make_engine(settings)
    cat = new_catalog(settings, make_session_factory(engine))
    add_items(cat, item_specs(40), seed_base=500)
    ids = [i for item in cat.items.values() for i in item["image_ids"]]
    embed(cat, ids, unit_rows(np.random.default_rng(11), len(ids)))
    publish(cat, ids, lists_k=24)
    table, sql = create_app(settings), create_app(settings.replace(serve_metadata_table=False))
    yield Served(cat, table, sql)
    for app in (table, sql):
        app.extensions["lookalike"].close()
    engine.dispose()


def _body(client: FlaskClient, url: str) -> bytes:
    response = client.get(url)
    assert response.status_code == 200, response.data
    return TOOK.sub(b'"took_ms":0', response.data)


def _from_table(served: Served, external_id: str, k: int = 5) -> bool:
    return served.searcher().similar_to_item(external_id, k=k, filters=Filters()).from_table


def test_table_path_answers_byte_for_byte_as_the_sql_path(served: Served) -> None:
    with session_scope(served.cat.sessions) as s:  # marks apply on both paths
        record_feedback(s, [Judgement("sku-003", "sku-007", FeedbackJudgement.DISSIMILAR,
                                      FeedbackSource.MERCHANDISER)])
    served.searcher().refresh_now()
    table, sql = served.table.test_client(), served.sql.test_client()
    compared = 0
    for ext in served.cat.items:
        for query in ("k=5", "k=12&exclude_group=true", "k=1"):
            url = f"/api/v1/items/{ext}/similar?{query}"
            assert _body(table, url) == _body(sql, url), url
            compared += 1
    assert compared == 120
    listed = sum(_from_table(served, ext) for ext in served.cat.items)
    assert listed >= 30  # of 40: the rest had lists too short, and SQL answered
    assert not served.sql.extensions["lookalike"].searcher.similar_to_item(
        "sku-001", k=5, filters=Filters()).from_table
    # with filters the table never serves
    url = "/api/v1/items/sku-001/similar?k=5&category=shoes"
    assert _body(table, url) == _body(sql, url)


def test_a_deleted_item_never_appears_and_a_new_title_at_once(served: Served) -> None:
    client = served.table.test_client()
    searcher = served.searcher()
    assert _from_table(served, "sku-002")
    top = [r["external_id"] for r in client.get("/api/v1/items/sku-002/similar?k=5").json["results"]]
    with session_scope(served.cat.sessions) as s:
        delete_items(s, [top[0]])
    # before any poll: the probes see the change, so SQL answers (without the deleted item)
    result = searcher.similar_to_item("sku-002", k=5, filters=Filters())
    assert not result.from_table and top[0] not in [m.meta.external_id for m in result.matches]
    body = client.get("/api/v1/items/sku-002/similar?k=5").json
    assert top[0] not in [r["external_id"] for r in body["results"]]
    searcher.refresh_now()  # the live set reads the deletion: the table serves again, without it
    result = searcher.similar_to_item("sku-002", k=5, filters=Filters())
    assert result.from_table and top[0] not in [m.meta.external_id for m in result.matches]
    assert client.get(f"/api/v1/items/{top[0]}/similar").status_code == 404

    renamed = top[1]
    with session_scope(served.cat.sessions) as s:
        s.execute(update(Item).where(Item.external_id == renamed).values(title="Renamed", updated_at=utcnow()))
    titles = {r["external_id"]: r["title"] for r in client.get("/api/v1/items/sku-002/similar?k=5").json["results"]}
    assert titles[renamed] == "Renamed"
    searcher.refresh_now()
    result = searcher.similar_to_item("sku-002", k=5, filters=Filters())
    assert result.from_table and {m.meta.external_id: m.meta.title for m in result.matches}[renamed] == "Renamed"
    # and the bytes still equal the SQL path's
    url = "/api/v1/items/sku-002/similar?k=5"
    assert _body(client, url) == _body(served.sql.test_client(), url)


def test_fresh_items_are_served_once_the_live_set_holds_them(served: Served) -> None:
    cat, searcher = served.cat, served.searcher()
    searcher.refresh_now()
    add_items(cat, [{"external_id": "late-1", "category": "bags"}], seed_base=7000)
    query = cat.vectors[cat.items["sku-004"]["image_ids"][0]]
    near = query + 0.01 * unit_rows(np.random.default_rng(2), 1)[0]
    embed(cat, cat.items["late-1"]["image_ids"], (near / np.linalg.norm(near))[None, :])
    searcher.refresh_now()
    result = searcher.similar_to_item("sku-004", k=3, filters=Filters())
    assert result.from_table and result.matches[0].meta.external_id == "late-1"
    url = "/api/v1/items/sku-004/similar?k=3"
    assert _body(served.table.test_client(), url) == _body(served.sql.test_client(), url)


def test_too_many_changes_give_the_answer_back_to_sql(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    searcher = served.searcher()
    monkeypatch.setattr(live_module, "LIVE_LIMIT", 3)
    with session_scope(served.cat.sessions) as s:
        s.execute(update(Item).where(Item.external_id.in_([f"sku-0{i}" for i in range(10, 20)]))
                  .values(title="Changed", updated_at=utcnow()))
    searcher.refresh_now()
    assert searcher.current().live.overflowed
    result = searcher.similar_to_item("sku-012", k=5, filters=Filters())
    assert not result.from_table
    url = "/api/v1/items/sku-012/similar?k=5"
    assert _body(served.table.test_client(), url) == _body(served.sql.test_client(), url)


def test_real_servers_answer_the_same_bytes_and_never_a_deleted_item(served: Served, tmp_path) -> None:
    """Two `lookalike serve` (gunicorn, 2 workers each), table on and off, on the same database."""
    settings = served.cat.settings
    table = LiveServer(settings, tmp_path / "table.log").start()
    try:
        sql = LiveServer(settings.replace(serve_metadata_table=False), tmp_path / "sql.log").start()
        try:
            session = requests.Session()

            tabled: list[bool] = []

            def body(server: LiveServer, path: str) -> bytes:
                response = session.get(server.url + path, timeout=30)
                assert response.status_code == 200, response.text
                tabled.append("table;dur=" in response.headers["Server-Timing"])
                return TOOK.sub(b'"took_ms":0', response.content)

            paths = [f"/api/v1/items/{ext}/similar?k={k}" for ext in list(served.cat.items)[:12] for k in (3, 10)]
            for path in paths * 2:  # twice: both workers of each server answer some
                assert body(table, path) == body(sql, path), path
            assert not any(tabled[1::2]) and sum(tabled[0::2]) >= len(paths)  # most from the table
            first = json.loads(body(table, "/api/v1/items/sku-005/similar?k=3"))["results"][0]["external_id"]
            with session_scope(served.cat.sessions) as s:
                delete_items(s, [first])
            for _ in range(4):  # no worker of either server may still show it, polled or not
                for server in (table, sql):
                    found = json.loads(body(server, "/api/v1/items/sku-005/similar?k=3"))["results"]
                    assert first not in [r["external_id"] for r in found]
        finally:
            sql.stop()
    finally:
        table.stop()
