"""Helpers for the worker tests: a tiny registered model, Fashion-MNIST items, a real Celery worker."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from PIL import Image
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from core.catalog import fashion_mnist_source, import_rows
from core.catalog.sample import CLASSES, Split, load_split
from core.config import Settings
from core.db import ItemImage, Job, session_scope
from core.embedding import ModelSpec, build_model, save_checkpoint
from core.jobs import get_job
from core.media import MediaStore
from core.registry import activate_model, register_model

# Re-exported: the worker tests import these from here (tests/support/processes.py owns them).
from tests.support.processes import WorkerProcess as WorkerProcess
from tests.support.processes import wait_until as wait_until

TINY_SPEC = ModelSpec(input_size=32, embedding_dim=32)
TINY_TRAINING = [
    "model.input_size=32", "model.embedding_dim=32", "epochs=1", "steps_per_epoch=2",
    "classes_per_batch=4", "images_per_class=2", "data.label=category",
    "data.holdout_classes=[trouser, bag, sandal]", "eval_batch_size=64", "amp=false",
]
"""Training overrides for a retrain that takes a second or two."""


def register_tiny_model(settings: Settings, sessions: sessionmaker[Session], *, seed: int = 0,
                        activate: bool = True, metrics: dict | None = None, version: str | None = None,
                        spec: ModelSpec = TINY_SPEC) -> str:
    """An untrained network (default: small CNN, 32 px, 32-d) saved as a checkpoint and registered."""
    torch.manual_seed(seed)
    net = build_model(spec)
    version = version or f"m-test-{seed}"
    path = settings.models_dir / f"{version}.pt"
    save_checkpoint(path, net, metrics=metrics)
    register_model(sessions, checkpoint_path=path, spec=spec.to_dict(), version=version,
                   metrics=metrics or {})
    if activate:
        activate_model(sessions, version)
    return version


def import_fmnist(settings: Settings, sessions: sessionmaker[Session], limit: int,
                  split: Split = Split.TRAIN) -> list[int]:
    """Import ``limit`` Fashion-MNIST items (in this process); their new image ids."""
    report = import_rows(fashion_mnist_source(split=split, limit=limit).rows, sessions=sessions,
                         store=MediaStore.from_settings(settings, fsync=False))
    assert not report.errors
    return report.new_image_ids


def write_fmnist_folder(root: Path, limit: int, *, start: int = 0) -> Path:
    """``limit`` Fashion-MNIST test images as PNG files in one sub-folder per class."""
    images, labels = load_split(Path("/usr/share/datasets/fashion-mnist"), Split.TEST)
    for index in range(start, start + limit):
        folder = root / CLASSES[int(labels[index])][0]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[index], "L").save(folder / f"img{index:05d}.png")
    return root


def analyze(engine: Engine) -> None:
    """Refresh PostgreSQL's planner statistics (fresh tables have none; autovacuum is slower)."""
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("ANALYZE")


def image_ids(sessions: sessionmaker[Session]) -> list[int]:
    with session_scope(sessions) as s:
        return list(s.scalars(select(ItemImage.id).order_by(ItemImage.id)))


def wait_for_job(sessions: sessionmaker[Session], job_id: int, timeout: float = 60.0) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = get_job(sessions, job_id)
        if job.status.finished:
            return job
        time.sleep(0.05)
    raise TimeoutError(f"job {job_id} did not finish in {timeout}s: {get_job(sessions, job_id).status}")
