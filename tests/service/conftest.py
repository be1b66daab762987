"""Fixtures for the service tests: a published catalog with controlled vectors, apps, clients."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from core.config import Settings
from core.db import make_session_factory
from core.task_names import TaskName
from service.apikeys import create_key
from service.app import create_app
from tests.service.support import Catalog, add_items, embed, new_catalog, publish, unit_rows
from worker.local import InProcessDispatcher

CATEGORIES = ("shoes", "bags", "hats")
COLORS = ("red", "blue", "green", "black")


def item_specs(n: int) -> list[dict]:
    """``n`` items over three categories (hats are rare), with colors, sizes, groups, 1-3 images."""
    specs = []
    for i in range(n):
        category = "hats" if i % 20 == 0 else CATEGORIES[i % 2]
        specs.append({
            "external_id": f"sku-{i:03d}", "category": category, "group": f"g{i // 4}",
            "attributes": {"color": COLORS[i % 4], "size": 36 + i % 5, "sale": i % 3 == 0},
            "n_images": 1 + i % 3,
        })
    return specs


@pytest.fixture
def service_settings(tmp_path: Path) -> Settings:
    # search_k far above the index size makes Annoy exhaustive, so results can be
    # compared with a brute-force reference exactly (recall is not what these tests test)
    return Settings(home=tmp_path / "home", index_poll_seconds=0.2, torch_threads=1, annoy_trees=10,
                    annoy_search_k=100_000, max_k=50, import_roots=(tmp_path / "import-images",))


@pytest.fixture
def service_sessions(service_settings: Settings, sqlite_engine: Engine) -> sessionmaker[Session]:
    return make_session_factory(sqlite_engine)


@pytest.fixture
def catalog(service_settings: Settings, service_sessions: sessionmaker[Session]) -> Catalog:
    """80 items / ~160 images with random unit vectors, all in a published index."""
    settings = service_settings.replace(database_url=service_settings.resolved_database_url)
    cat = new_catalog(settings, service_sessions)
    add_items(cat, item_specs(80), seed_base=1000)
    ids = [i for item in cat.items.values() for i in item["image_ids"]]
    embed(cat, ids, unit_rows(np.random.default_rng(7), len(ids)))
    publish(cat, ids)
    return cat


@pytest.fixture
def app(catalog: Catalog) -> Iterator[Flask]:
    """The app in embedded mode, with the worker's in-process dispatcher as the CLI wires it."""
    dispatcher = InProcessDispatcher(catalog.settings, background=True)
    application = create_app(catalog.settings, dispatcher=dispatcher)
    yield application
    application.extensions["lookalike"].close()
    dispatcher.close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


class RecordingDispatcher:
    """Records what would be sent; for endpoints whose task (a real training run) is too slow to run here."""

    def __init__(self) -> None:
        self.sent: list[tuple[TaskName, dict[str, Any]]] = []

    def send(self, task: TaskName, **kwargs: Any) -> str:
        self.sent.append((TaskName(task), kwargs))
        return f"recorded-{len(self.sent)}"


@pytest.fixture
def recording(catalog: Catalog) -> Iterator[tuple[FlaskClient, RecordingDispatcher]]:
    dispatcher = RecordingDispatcher()
    application = create_app(catalog.settings, dispatcher=dispatcher)
    yield application.test_client(), dispatcher
    application.extensions["lookalike"].close()


@pytest.fixture
def api_key(catalog: Catalog) -> str:
    key, _ = create_key(catalog.sessions, "tests")
    return key


@pytest.fixture
def auth(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"}
