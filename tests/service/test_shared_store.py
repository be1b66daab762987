"""A shared object store between hosts: one host writes images and index versions, another serves them.

The "hosts" share only the database and a real SeaweedFS bucket; each has its own
home, artifacts directory and cache.
"""

from __future__ import annotations

import gc
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from flask import Flask
from sqlalchemy import select

from core.artifacts import ArtifactCache, StoreUnavailable, open_store, published_versions
from core.config import Settings
from core.db import ItemImage, session_scope
from core.index_store import INDEXES_PREFIX, version_prefix
from core.media import MEDIA_PREFIX, MediaStore
from migrations import alembic_config
from service.app import create_app
from tests.service.support import Catalog, png_bytes, publish
from tests.support.servers import ObjectStoreServer
from worker.flows.retire import retire_old_indexes

pytestmark = pytest.mark.objectstore
_prefixes = itertools.count()


def on_store(settings: Settings, server: ObjectStoreServer, prefix: str) -> Settings:
    return settings.replace(artifact_store=f"s3://{server.bucket}/{prefix}", s3_endpoint_url=server.endpoint_url,
                            s3_region="us-east-1", s3_access_key_id="test", s3_secret_access_key="test")


@pytest.fixture
def service_settings(tmp_path: Path, object_store_server: ObjectStoreServer) -> Settings:
    """Host A: the service tests' settings with the media in the object store."""
    # host A's home is the one the migrated test database lives in (the ``settings`` fixture's)
    base = Settings(home=tmp_path / "home", index_poll_seconds=0.2, torch_threads=1, annoy_trees=10,
                    annoy_search_k=100_000, max_k=50)
    return on_store(base, object_store_server, f"media-test-{next(_prefixes)}")


def host_b(catalog: Catalog, tmp_path: Path) -> Settings:
    """Another host: same database and store, its own home (its own artifacts and cache)."""
    return catalog.settings.replace(home=tmp_path / "host-b")


@pytest.fixture
def app_b(catalog: Catalog, tmp_path: Path) -> Iterator[Flask]:
    application = create_app(host_b(catalog, tmp_path))
    yield application
    application.extensions["lookalike"].close()


def media_keys(catalog: Catalog) -> list[str]:
    with session_scope(catalog.sessions) as s:
        return sorted(set(s.scalars(select(ItemImage.media_key))))


def test_every_imported_image_is_in_the_store_and_another_host_serves_it(catalog: Catalog, app_b: Flask,
                                                                          tmp_path: Path) -> None:
    keys = media_keys(catalog)
    store = open_store(catalog.settings)
    stored = {k.rsplit("/", 1)[1] for k in store.list_keys(MEDIA_PREFIX)}
    assert stored == set(keys) and len(keys) > 100
    client = app_b.test_client()
    for key in keys[:5]:
        response = client.get(f"/api/v1/media/{key}")
        assert response.status_code == 200 and response.mimetype == "image/png"
        assert response.data == store.read_bytes(f"{MEDIA_PREFIX}{key[:2]}/{key[2:4]}/{key}")
    cached = sorted(p.name for p in (tmp_path / "host-b" / "cache" / "objects").rglob("*") if p.is_file())
    assert cached == keys[:5]  # downloaded on first use, into B's own cache
    assert client.get("/api/v1/media/" + "0" * 64).status_code == 404


def test_with_the_store_down_cached_images_are_served_and_the_rest_is_a_503(tmp_path: Path) -> None:
    server = ObjectStoreServer.start()  # its own server: this test stops it
    try:
        settings = on_store(Settings(home=tmp_path / "host-a"), server, "down-test")
        writer = MediaStore.from_settings(settings)
        first, second = writer.put_bytes(png_bytes(1)), writer.put_bytes(png_bytes(2))
        b = settings.replace(home=tmp_path / "host-b", database_url=f"sqlite:///{tmp_path / 'b.db'}")
        command.upgrade(alembic_config(b.resolved_database_url), "head")
        app = create_app(b)
        try:
            client = app.test_client()
            assert client.get(f"/api/v1/media/{first.key}").data == png_bytes(1)  # now in B's cache
            server.stop()
            assert client.get(f"/api/v1/media/{first.key}").data == png_bytes(1)
            down = client.get(f"/api/v1/media/{second.key}")
            assert down.status_code == 503 and down.json["error"]["code"] == "store_unavailable"
            assert down.headers["Retry-After"] and server.endpoint_url not in down.get_data(as_text=True)
        finally:
            app.extensions["lookalike"].close()
        with pytest.raises(StoreUnavailable):
            writer.put_bytes(png_bytes(3))
        assert not writer.path(writer.describe(png_bytes(3)).key).exists()  # no local copy of an unsaved image
    finally:
        server.close()


def test_an_index_built_on_one_host_is_served_by_another_and_follows_its_publishes(
        catalog: Catalog, app_b: Flask, tmp_path: Path) -> None:
    store = open_store(catalog.settings)
    first = catalog.index_version
    assert published_versions(store, INDEXES_PREFIX) == [version_prefix(first)]
    b_home = tmp_path / "host-b"
    assert not (b_home / "artifacts" / "indexes").exists()  # B builds nothing and shares no folder
    client_b = app_b.test_client()
    answer = client_b.get("/api/v1/items/sku-001/similar?k=5")
    assert answer.status_code == 200 and answer.json["index_version"] == first
    # The same answer host A gives from its own directory.
    app_a = create_app(catalog.settings)
    try:
        assert app_a.test_client().get("/api/v1/items/sku-001/similar?k=5").json["results"] == answer.json["results"]
    finally:
        app_a.extensions["lookalike"].close()
    cache_b = ArtifactCache(store, b_home / "cache", max_bytes=0)
    served = sorted(cache_b.keys())
    assert served == sorted(version_prefix(first) + name for name in ("ids.npy", "index.ann", "manifest.json"))
    assert cache_b.evict() == []  # everything cached is mapped by the served index: pinned

    # Host A publishes a new version; B follows (the watcher's poll or notification), downloads, swaps.
    second = publish(catalog, [i for item in catalog.items.values() for i in item["image_ids"]][:100])
    app_b.extensions["lookalike"].searcher.refresh_now()
    assert client_b.get("/api/v1/items/sku-001/similar?k=5").json["index_version"] == second
    gc.collect()  # the old state is gone with its last reference, and so is its pin
    evicted = cache_b.evict()
    assert sorted(evicted) == sorted(version_prefix(first) + n for n in ("ids.npy", "index.ann", "manifest.json"))

    # Retention removes a retired version from the store whole.
    retire_old_indexes(catalog.settings.replace(keep_index_versions=1), catalog.sessions)
    assert published_versions(store, INDEXES_PREFIX) == [version_prefix(second)]
    assert list(store.list_keys(version_prefix(first))) == []
