"""Searchable at once on every worker: an item PUT through one process is found by id on another.

Two apps on one PostgreSQL database stand for two gunicorn workers. The one that
answers the PUT embeds the item and refreshes its own fresh set; the other has not
polled since it loaded the index (its poll interval is an hour here), which is the
window of up to ``index_poll_seconds`` every other worker has in production.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from alembic import command
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from core.config import Settings
from core.db import Embedding, make_engine, make_session_factory, session_scope
from migrations import alembic_config
from service.apikeys import create_key
from service.app import create_app
from tests.service.conftest import item_specs
from tests.service.support import Catalog, add_items, brute_force, embed, new_catalog, png_bytes, publish, unit_rows
from tests.support.servers import PostgresServer
from worker.local import InProcessDispatcher

pytestmark = pytest.mark.postgres


@dataclass
class TwoWorkers:
    writer: FlaskClient
    """Takes the PUT: embeds in-process and refreshes its own fresh set before answering."""
    reader: FlaskClient
    """Another worker of the same service, between two polls."""
    catalog: Catalog
    auth: dict[str, str]


def _searcher_of(client: FlaskClient):  # type: ignore[no-untyped-def]
    return client.application.extensions["lookalike"].searcher


@pytest.fixture
def workers(tmp_path: Path, postgres_server: PostgresServer) -> Iterator[TwoWorkers]:
    url = postgres_server.create_database(f"two{uuid.uuid4().hex[:12]}")
    command.upgrade(alembic_config(url), "head")
    settings = Settings(home=tmp_path / "home", database_url=url, index_poll_seconds=3600, torch_threads=1,
                        annoy_trees=10, annoy_search_k=100_000, max_k=50)
    engine = make_engine(settings)
    cat = new_catalog(settings, make_session_factory(engine))
    add_items(cat, item_specs(40), seed_base=500)
    ids = [i for item in cat.items.values() for i in item["image_ids"]]
    embed(cat, ids, unit_rows(np.random.default_rng(11), len(ids)))
    publish(cat, ids)
    key, _ = create_key(cat.sessions, "tests")
    dispatcher = InProcessDispatcher(settings, background=True)
    apps: list[Flask] = [create_app(settings, dispatcher=dispatcher), create_app(settings)]
    yield TwoWorkers(apps[0].test_client(), apps[1].test_client(), cat, {"Authorization": f"Bearer {key}"})
    for app in apps:
        app.extensions["lookalike"].close()
    dispatcher.close()
    engine.dispose()


def test_an_item_put_through_one_worker_is_found_by_id_on_another_at_once(workers: TwoWorkers) -> None:
    reader, cat = workers.reader, workers.catalog
    assert reader.get("/api/v1/items/sku-003/similar?k=5").status_code == 200  # its index is loaded
    form = {"image": [(io.BytesIO(png_bytes(77)), "p0.png")],
            "metadata": '{"title": "New boots", "category": "shoes"}'}
    put = workers.writer.put("/api/v1/items/new-1", data=form, content_type="multipart/form-data",
                             headers=workers.auth)
    assert put.status_code == 201, put.json
    assert put.json["embedding"]["status"] == "succeeded"
    with session_scope(cat.sessions) as s:
        query = np.frombuffer(s.scalar(select(Embedding.vector).where(
            Embedding.image_id == put.json["images"][0]["id"])), dtype="<f4")

    answer = reader.get("/api/v1/items/new-1/similar?k=8")  # no sleep: straight after the PUT
    assert answer.status_code == 200, answer.json
    expected = [e for e, _, _ in brute_force(cat, query, k=8, exclude={"new-1"})]
    assert [r["external_id"] for r in answer.json["results"]] == expected
    assert len(_searcher_of(reader).current().fresh) == 0  # it did not poll: the vector came from SQL
    assert [r["external_id"] for r in workers.writer.get("/api/v1/items/new-1/similar?k=8").json["results"]
            ] == expected


def test_an_item_that_is_not_embedded_is_still_409_on_every_worker(workers: TwoWorkers) -> None:
    add_items(workers.catalog, [{"external_id": "not-yet", "category": "bags"}], seed_base=9000)  # no vector
    for client in (workers.writer, workers.reader):
        answer = client.get("/api/v1/items/not-yet/similar?k=3")
        assert answer.status_code == 409 and answer.json["error"]["code"] == "not_embedded"
