"""Reindex through a real Redis broker and a real `lookalike worker` process."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from core.catalog.sample import Split
from core.db import IndexStatus, IndexVersion, ItemImage, Job, JobKind, JobPhase, JobStatus, session_scope
from core.embedding import Embedder, ModelSpec
from core.embeddings_store import load_vectors
from core.index import IndexManifest, VectorIndex
from core.jobs import create_job, get_job
from core.media import MediaStore
from core.notify import IndexChangeListener
from core.registry import active_index, active_model, get_model
from core.reindex_requests import ReindexRequest, submit_reindex
from core.task_names import TaskName
from tests.worker.conftest import CeleryStack
from tests.worker.support import (
    TINY_SPEC,
    image_ids,
    import_fmnist,
    register_tiny_model,
    wait_for_job,
    wait_until,
    write_fmnist_folder,
)

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.slow]


def _index_rows(stack: CeleryStack) -> list[IndexVersion]:
    with session_scope(stack.sessions) as s:
        return list(s.scalars(select(IndexVersion).order_by(IndexVersion.id)))


def _no_open_jobs(stack: CeleryStack) -> bool:
    with session_scope(stack.sessions) as s:
        return not s.scalar(select(func.count()).select_from(Job).where(
            Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING])))


def _indexed_catalog(stack: CeleryStack, n: int, spec: ModelSpec = TINY_SPEC) -> IndexVersion:
    """A registered model, ``n`` items, embedded by the worker; its first index (auto-built)."""
    register_tiny_model(stack.settings, stack.sessions, spec=spec)
    ids = import_fmnist(stack.settings, stack.sessions, n)
    stack.dispatcher.send(TaskName.EMBED_IMAGES, image_ids=ids)
    index = wait_until(lambda: active_index(stack.sessions), 90, what="first index")
    wait_until(lambda: _no_open_jobs(stack), 60, what="jobs settled")
    return index


def test_import_then_reindex_publishes_the_right_counts_and_model(celery_stack: CeleryStack, tmp_path: Path) -> None:
    stack = celery_stack
    model_version = register_tiny_model(stack.settings, stack.sessions)
    listener = IndexChangeListener(stack.settings)
    folder = write_fmnist_folder(tmp_path / "catalog", 120)
    job_id = create_job(stack.sessions, JobKind.IMPORT, {"path": str(folder)})
    stack.dispatcher.send(TaskName.IMPORT_CATALOG, job_id=job_id, path=str(folder), format="folder")
    job = wait_for_job(stack.sessions, job_id)
    assert job.status is JobStatus.SUCCEEDED, job.error
    assert job.result["created"] == 120 and job.result["queued_for_embedding"] == 120

    # The completed embed job requests the first build on its own (no index yet).
    first = wait_until(lambda: active_index(stack.sessions), 90, what="first index")
    assert first.model.version == model_version
    assert (first.image_count, first.item_count) == (120, 120)
    assert first.self_recall == 1.0  # search_k 10,000 over 120 items is exhaustive: every neighbour found
    manifest = IndexManifest.read(Path(first.path))
    assert (manifest.count, manifest.model_version, manifest.dim) == (120, model_version, 32)
    announced = listener.wait(timeout=10)
    assert announced is not None and announced.index_version == first.version

    # What the index holds is what the model computes for the stored images.
    index = VectorIndex.load(Path(first.path))
    assert sorted(index.ids.tolist()) == image_ids(stack.sessions)
    model = get_model(stack.sessions, model_version)
    embedder = Embedder.from_checkpoint(Path(model.checkpoint_path), device=None)
    media = MediaStore.from_settings(stack.settings)
    with session_scope(stack.sessions) as s:
        some = list(s.execute(select(ItemImage.id, ItemImage.media_key).order_by(ItemImage.id).limit(5)))
        stored_ids, stored = load_vectors(s, model.id, [r.id for r in some])
    expected = embedder.embed([media.open(r.media_key) for r in some])
    np.testing.assert_allclose(stored, expected, atol=1e-5)
    np.testing.assert_allclose(np.stack([index.vector(int(i)) for i in stored_ids]), expected, atol=1e-5)
    index.close()

    # Nothing changed: a plain request is a no-op; --force builds and publishes a new version.
    wait_until(lambda: _no_open_jobs(stack), 30, what="jobs settled")
    plain = submit_reindex(stack.settings, stack.sessions, stack.dispatcher)
    result = wait_for_job(stack.sessions, plain.job_id).result
    assert result["skipped"] == "up to date" and result["index_version"] == first.version
    forced = submit_reindex(stack.settings, stack.sessions, stack.dispatcher, force=True)
    assert wait_for_job(stack.sessions, forced.job_id).status is JobStatus.SUCCEEDED
    second = active_index(stack.sessions)
    assert second.version != first.version and second.image_count == 120
    statuses = {row.version: row.status for row in _index_rows(stack)}
    assert statuses == {first.version: IndexStatus.READY, second.version: IndexStatus.ACTIVE}
    announced = listener.wait(timeout=10)
    assert announced is not None and announced.index_version == second.version
    listener.close()


def test_two_concurrent_reindex_requests_give_one_build(celery_stack: CeleryStack) -> None:
    stack = celery_stack
    _indexed_catalog(stack, 60)
    before = len(_index_rows(stack))
    barrier = threading.Barrier(2)
    results: list[ReindexRequest] = []

    def ask() -> None:
        barrier.wait()
        results.append(submit_reindex(stack.settings, stack.sessions, stack.dispatcher, force=True))

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results[0].job_id == results[1].job_id
    assert sorted(r.joined for r in results) == [False, True]
    job = wait_for_job(stack.sessions, results[0].job_id)
    assert job.status is JobStatus.SUCCEEDED, job.error
    assert len(_index_rows(stack)) == before + 1
    # Once it is over, the next request is a new job.
    again = submit_reindex(stack.settings, stack.sessions, stack.dispatcher, force=True)
    assert again.job_id != job.id and not again.joined
    wait_for_job(stack.sessions, again.job_id)


def test_worker_killed_mid_reindex_leaves_the_served_index_and_the_retry_completes(celery_stack: CeleryStack) -> None:
    stack = celery_stack
    # 64 px and new images nobody has embedded yet: the reindex has a second or so of work
    # to do before it builds, plenty of time to catch it half way.
    served = _indexed_catalog(stack, 60, ModelSpec(input_size=64, embedding_dim=32))
    import_fmnist(stack.settings, stack.sessions, 700, split=Split.TEST)
    request = submit_reindex(stack.settings, stack.sessions, stack.dispatcher)
    child = stack.worker.child_pids()[0]
    wait_until(lambda: (j := get_job(stack.sessions, request.job_id)).status is JobStatus.RUNNING
               and j.phase is JobPhase.EMBEDDING and j.progress_done > 0, 60, 0.01, "reindex half way")
    os.kill(child, signal.SIGSTOP)  # frozen mid-flight: look at what is served
    try:
        now = active_index(stack.sessions)
        assert (now.version, now.image_count) == (served.version, 60)
        assert VectorIndex.load(Path(now.path), verify_checksum=True).manifest.count == 60
        assert get_job(stack.sessions, request.job_id).status is JobStatus.RUNNING
    finally:
        os.kill(child, signal.SIGKILL)

    job = wait_for_job(stack.sessions, request.job_id, timeout=120)
    assert job.status is JobStatus.SUCCEEDED, f"{job.error}\n{stack.worker.log()[-3000:]}"
    assert job.attempts == 2  # the message came back after the worker process died
    fresh = active_index(stack.sessions)
    assert fresh.version != served.version and fresh.image_count == 760
    assert fresh.model.version == active_model(stack.sessions).version
    rows = {row.version: row.status for row in _index_rows(stack)}
    assert rows[served.version] is IndexStatus.READY
    assert IndexStatus.BUILDING not in rows.values()
    assert list(rows.values()).count(IndexStatus.ACTIVE) == 1
