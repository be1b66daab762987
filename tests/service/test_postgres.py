"""The search path on PostgreSQL: similar-by-id, filters on JSONB attributes, fresh set, deletes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import numpy as np
import pytest
from alembic import command
from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

from core.config import Settings
from core.db import Item, ItemStatus, make_engine, make_session_factory, session_scope
from migrations import alembic_config
from service.apikeys import create_key
from service.app import create_app
from tests.service.conftest import item_specs
from tests.service.item_reference import brute_force_item
from tests.service.support import Catalog, add_items, brute_force, embed, new_catalog, publish, unit_rows
from tests.support.servers import PostgresServer


@pytest.fixture
def pg_client(tmp_path, postgres_server: PostgresServer) -> Iterator[tuple[FlaskClient, Catalog]]:
    url = postgres_server.create_database(f"svc{uuid.uuid4().hex[:12]}")
    command.upgrade(alembic_config(url), "head")
    settings = Settings(home=tmp_path / "home", database_url=url, index_poll_seconds=0.2, torch_threads=1,
                        annoy_trees=10, annoy_search_k=100_000, max_k=50)
    engine = make_engine(settings)
    sessions: sessionmaker[Session] = make_session_factory(engine)
    cat = new_catalog(settings, sessions)
    add_items(cat, item_specs(40), seed_base=500)
    ids = [i for item in cat.items.values() for i in item["image_ids"]]
    embed(cat, ids, unit_rows(np.random.default_rng(11), len(ids)))
    publish(cat, ids)
    app = create_app(settings)
    yield app.test_client(), cat
    app.extensions["lookalike"].close()
    engine.dispose()


@pytest.mark.postgres
def test_search_on_postgresql(pg_client: tuple[FlaskClient, Catalog]) -> None:
    client, cat = pg_client
    query = cat.vectors[cat.items["sku-003"]["image_ids"][0]]
    body = client.get("/api/v1/items/sku-003/similar?k=8").json
    assert [r["external_id"] for r in body["results"]] == [e for e, _, _ in brute_force(cat, query, k=8,
                                                                                        exclude={"sku-003"})]
    body = client.get("/api/v1/items/sku-003/similar?k=40&attr=color:red&attr=sale:true&attr=size:36").json
    allowed = {e for e, it in cat.items.items() if it["attributes"]["color"] == "red"
               and it["attributes"]["sale"] and it["attributes"]["size"] == 36} - {"sku-003"}
    assert {r["external_id"] for r in body["results"]} == allowed
    # fresh: a new item next to sku-003 is found before any rebuild
    add_items(cat, [{"external_id": "pg-new", "category": "bags"}], seed_base=7000)
    near = query + 0.01 * unit_rows(np.random.default_rng(2), 1)[0]
    embed(cat, cat.items["pg-new"]["image_ids"], (near / np.linalg.norm(near))[None, :])
    client.application.extensions["lookalike"].searcher.refresh_now()
    assert client.get("/api/v1/items/sku-003/similar?k=1").json["results"][0]["external_id"] == "pg-new"
    with session_scope(cat.sessions) as s:
        s.query(Item).filter(Item.external_id == "pg-new").update({Item.status: ItemStatus.DELETED})
    assert client.get("/api/v1/items/sku-003/similar?k=1").json["results"][0]["external_id"] != "pg-new"
    nul = client.get("/api/v1/items/sku-003/similar?category=a%00b")
    assert nul.status_code == 200 and nul.json["results"] == []
    assert client.get("/api/v1/items/a%00b").status_code == 404


@pytest.mark.postgres
def test_feedback_filters_similar_on_postgresql(pg_client: tuple[FlaskClient, Catalog]) -> None:
    client, cat = pg_client
    key, _ = create_key(cat.sessions, "pg-feedback")
    before = [r["external_id"] for r in client.get("/api/v1/items/sku-003/similar?k=8").json["results"]]
    marked = [before[0], before[2]]
    response = client.post("/api/v1/feedback", headers={"X-API-Key": key}, json={"judgements": [
        {"query": "sku-003", "result": ext, "judgement": "dissimilar", "source": "merchandiser"} for ext in marked]})
    assert response.status_code == 200, response.json
    after = [r["external_id"] for r in client.get("/api/v1/items/sku-003/similar?k=8").json["results"]]
    assert after == [e for e, _, _ in brute_force_item(cat, "sku-003", k=8, exclude=marked)]
