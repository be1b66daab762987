"""Checkpoints through a shared object store: registered on one host, loaded on another."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import Engine

from core.artifacts import open_store
from core.config import Settings
from core.db import make_session_factory
from core.embedding import Backbone, Embedder, ModelSpec
from core.registry import checkpoint_key, checkpoint_path, get_model
from tests.core.test_artifacts_store import s3_store
from tests.support.servers import ObjectStoreServer
from trainer.register import register_untrained

pytestmark = pytest.mark.objectstore


def test_a_model_registered_on_one_host_loads_on_another(object_store_server: ObjectStoreServer, tmp_path: Path,
                                                         sqlite_engine: Engine) -> None:
    sessions = make_session_factory(sqlite_engine)  # the one database both hosts share
    prefix = s3_store(object_store_server).prefix
    a = Settings(home=tmp_path / "host-a", artifact_store=f"s3://{object_store_server.bucket}/{prefix}",
                 s3_endpoint_url=object_store_server.endpoint_url, s3_access_key_id="test",
                 s3_secret_access_key="test", torch_threads=1)
    b = a.replace(home=tmp_path / "host-b")
    spec = ModelSpec.for_backbone(Backbone.SMALL_CNN, embedding_dim=16, input_size=32)
    version = register_untrained(sessions, a, spec, version="m-shared")
    assert open_store(a).exists(checkpoint_key(version))  # uploaded before the row was written
    record = get_model(sessions, version)
    # Host B is another machine: host A's files are not there (moved aside, for the reference).
    on_a = Path(record.checkpoint_path).rename(tmp_path / "host-a-checkpoint.pt")
    on_b = checkpoint_path(b, record.checkpoint_path, version)
    assert on_b.is_relative_to(b.resolved_cache_dir) and on_b.read_bytes() == on_a.read_bytes()
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    vectors = [Embedder.from_checkpoint(path).embed([image]) for path in (on_a, on_b)]
    np.testing.assert_allclose(vectors[0], vectors[1], rtol=1e-6)


def test_without_a_store_nothing_changes(settings: Settings, sqlite_engine: Engine) -> None:
    spec = ModelSpec.for_backbone(Backbone.SMALL_CNN, embedding_dim=16, input_size=32)
    version = register_untrained(make_session_factory(sqlite_engine), settings, spec, version="m-local")
    assert checkpoint_path(settings, "", version) == settings.models_dir / "m-local.pt"
    assert not settings.resolved_cache_dir.exists()
