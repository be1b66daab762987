"""The flows in the embedded setup (no broker): the same task code, run in-process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import event, select, update

from core.catalog import delete_items
from core.catalog.sample import Split
from core.catalog.servable import servable_metadata
from core.db import (
    IndexStatus,
    IndexVersion,
    Item,
    ItemImage,
    Job,
    JobKind,
    JobPhase,
    JobStatus,
    ModelVersion,
    session_scope,
)
from core.embeddings_store import fresh_image_ids, load_vectors, snapshot_vectors
from core.index import IndexManifest, Metric, exact_search
from core.index.metadata_table import MetadataTable
from core.index.neighbours import NeighbourLists
from core.jobs import create_job, get_job, job_to_dict, list_jobs
from core.publish import publish_index
from core.registry import active_index, active_model, list_indexes
from core.reindex_requests import submit_reindex
from core.task_names import TaskName
from service.filters import Filters
from service.metrics import Metrics
from service.searcher import Searcher
from tests.worker.conftest import Embedded
from tests.worker.support import TINY_TRAINING, import_fmnist, register_tiny_model
from trainer.config import DataSource, LabelKind
from worker.flows.index_build import build_version
from worker.flows.retrain import retrain_config


def _indexed(env: Embedded, n: int) -> IndexVersion:
    """A model, ``n`` items embedded on arrival; the first index builds by itself."""
    register_tiny_model(env.settings, env.sessions)
    env.dispatcher.send(TaskName.EMBED_IMAGES, image_ids=import_fmnist(env.settings, env.sessions, n))
    index = active_index(env.sessions)
    assert index is not None and index.image_count == n
    return index


def _rows(env: Embedded) -> dict[str, IndexStatus]:
    return {i.version: i.status for i in list_indexes(env.sessions)}


def test_reindex_without_an_active_model_fails_with_a_clear_message(embedded: Embedded) -> None:
    job_id = submit_reindex(embedded.settings, embedded.sessions, embedded.dispatcher).job_id
    job = get_job(embedded.sessions, job_id)
    assert job.status is JobStatus.FAILED
    assert job.error == "no model yet: run `lookalike train --activate` or `lookalike models init`"
    # Trained but never activated: the message names the missing step and the versions.
    register_tiny_model(embedded.settings, embedded.sessions, activate=False, version="m-trained")
    job_id = submit_reindex(embedded.settings, embedded.sessions, embedded.dispatcher).job_id
    job = get_job(embedded.sessions, job_id)
    assert job.status is JobStatus.FAILED
    assert job.error == ("no active model: activate one with `lookalike models activate VERSION` "
                         "(registered, not active: m-trained)")


def _fresh(env: Embedded) -> list[int]:
    """The fresh set of the active index, as the worker's rebuild threshold counts it."""
    with session_scope(env.sessions) as s:
        return fresh_image_ids(s).tolist()


def _searcher(env: Embedded) -> Searcher:
    """The service's searcher over this database (no watcher thread: loaded on first use)."""
    return Searcher(env.settings, env.sessions.kw["bind"], env.sessions, Metrics(), watch=False)


def _found(searcher: Searcher, query: np.ndarray, k: int) -> list[int]:
    """The image ids the searcher answers for a vector (every item here has one image)."""
    return [m.meta.image_id for m in searcher.search_vector(query, k=k, filters=Filters()).matches]


def test_an_item_added_after_the_build_is_findable_at_once_and_a_deleted_one_never(embedded: Embedded) -> None:
    env = embedded
    index = _indexed(env, 80)
    new_images = import_fmnist(env.settings, env.sessions, 3, split=Split.TEST)
    env.dispatcher.send(TaskName.EMBED_IMAGES, image_ids=new_images)  # what an import sends
    assert active_index(env.sessions).version == index.version  # no rebuild (threshold 1000)

    searcher = _searcher(env)
    assert _fresh(env) == new_images
    assert searcher.current().fresh.image_ids.tolist() == new_images  # the service's set is the same
    model_id = active_model(env.sessions).id
    with session_scope(env.sessions) as s:
        every_id, every = load_vectors(s, model_id)
        _, query = load_vectors(s, model_id, new_images[:1])
    # Reference: brute force over every servable vector; the new image is its own nearest.
    rows, _ = exact_search(every, query, 5, metric=Metric.EUCLIDEAN)
    assert every_id[rows[0][0]] == new_images[0]
    assert _found(searcher, query[0], 5) == every_id[rows[0]].tolist()

    with session_scope(env.sessions) as s:
        gone = [s.scalar(select(Item.external_id).join(ItemImage).where(ItemImage.id == i))
                for i in (new_images[0], int(every_id[0]))]  # one fresh, one indexed
        delete_items(s, gone)
    assert new_images[0] not in _fresh(env)
    for probe in (query[0], every[0]):
        found = _found(searcher, probe, 10)
        assert new_images[0] not in found and int(every_id[0]) not in found


def test_a_fresh_set_past_the_threshold_queues_a_rebuild(embedded: Embedded) -> None:
    env = embedded
    env.dispatcher.runtime.settings = env.settings = env.settings.replace(fresh_rebuild_threshold=4)
    first = _indexed(env, 40)
    env.dispatcher.send(TaskName.EMBED_IMAGES, image_ids=import_fmnist(env.settings, env.sessions, 3, Split.TEST))
    assert active_index(env.sessions).version == first.version  # 3 fresh: not yet
    env.dispatcher.send(TaskName.EMBED_IMAGES, image_ids=import_fmnist(env.settings, env.sessions, 5, Split.TEST))
    rebuilt = active_index(env.sessions)  # 5 fresh > 4: rebuilt and published
    assert rebuilt.version != first.version and rebuilt.image_count == 45
    assert _fresh(env) == []
    reindexes = list_jobs(env.sessions, kind=JobKind.REINDEX)
    assert reindexes[0].params["reason"] == "fresh set of 5 images > 4"


def test_an_index_below_the_recall_floor_is_not_published(embedded: Embedded) -> None:
    env = embedded
    served = _indexed(env, 30)
    env.dispatcher.runtime.settings = env.settings.replace(min_verify_recall=1.01)
    job = get_job(env.sessions, submit_reindex(env.settings, env.sessions, env.dispatcher, force=True).job_id)
    assert job.status is JobStatus.FAILED and "below LOOKALIKE_MIN_VERIFY_RECALL=1.01" in job.error
    assert active_index(env.sessions).version == served.version
    failed = [v for v, status in _rows(env).items() if status is IndexStatus.FAILED]
    assert len(failed) == 1 and not (env.settings.indexes_dir / failed[0]).exists()  # removed at once


def test_a_killed_build_is_marked_failed_by_the_next_reindex(embedded: Embedded) -> None:
    env = embedded
    served = _indexed(env, 30)
    with session_scope(env.sessions) as s:  # what a SIGKILL mid-build leaves: a row, no directory
        s.add(IndexVersion(version="i-killed", model_id=served.model_id, status=IndexStatus.BUILDING,
                           path=str(env.settings.indexes_dir / "i-killed")))
    job = get_job(env.sessions, submit_reindex(env.settings, env.sessions, env.dispatcher, force=True).job_id)
    assert job.status is JobStatus.SUCCEEDED
    rows = _rows(env)
    assert rows["i-killed"] is IndexStatus.FAILED and rows[served.version] is IndexStatus.READY
    assert list(rows.values()).count(IndexStatus.ACTIVE) == 1


def test_a_build_never_published_is_retired_before_the_next_one(embedded: Embedded) -> None:
    env = embedded
    env.dispatcher.runtime.settings = env.settings = env.settings.replace(keep_index_versions=2)
    first = _indexed(env, 20).version
    submit_reindex(env.settings, env.sessions, env.dispatcher, force=True)
    served = active_index(env.sessions).version
    # what a worker killed between build and publish leaves: a verified READY version, never served
    model = active_model(env.sessions)
    with session_scope(env.sessions) as s:
        snapshot = snapshot_vectors(s, model.id)
    stale = build_version(env.settings, env.sessions, model, snapshot).version
    assert _rows(env)[stale] is IndexStatus.READY
    job = get_job(env.sessions, submit_reindex(env.settings, env.sessions, env.dispatcher, force=True).job_id)
    assert job.status is JobStatus.SUCCEEDED, job.error
    rows = _rows(env)
    # the version served before stays the rollback target; the never-served build is gone
    assert rows[served] is IndexStatus.READY and rows[stale] is IndexStatus.RETIRED
    assert rows[first] is IndexStatus.RETIRED and list(rows.values()).count(IndexStatus.ACTIVE) == 1
    assert not (env.settings.indexes_dir / stale).exists()


def test_publish_keeps_the_newest_versions_and_retire_deletes_the_rest(embedded: Embedded) -> None:
    env = embedded
    env.dispatcher.runtime.settings = env.settings = env.settings.replace(keep_index_versions=2)
    versions = [_indexed(env, 20).version]
    for _ in range(2):
        submit_reindex(env.settings, env.sessions, env.dispatcher, force=True).job_id
        versions.append(active_index(env.sessions).version)
    rows = _rows(env)
    assert [rows[v] for v in versions] == [IndexStatus.RETIRED, IndexStatus.READY, IndexStatus.ACTIVE]
    assert [(env.settings.indexes_dir / v).is_dir() for v in versions] == [False, True, True]
    # Rolling back to the kept version flips the active index in one step.
    publish_index(env.settings, env.sessions, versions[1])
    rows = _rows(env)
    assert (rows[versions[1]], rows[versions[2]]) == (IndexStatus.ACTIVE, IndexStatus.READY)
    with pytest.raises(Exception, match="retired"):
        publish_index(env.settings, env.sessions, versions[0])


def test_a_finished_job_is_not_run_again(embedded: Embedded) -> None:
    env = embedded
    _indexed(env, 20)
    job_id = submit_reindex(env.settings, env.sessions, env.dispatcher, force=True).job_id
    before = _rows(env)
    env.dispatcher.send(TaskName.REINDEX, job_id=job_id, force=True)  # a redelivered message
    assert _rows(env) == before
    import_job = create_job(env.sessions, JobKind.IMPORT)
    env.dispatcher.send(TaskName.IMPORT_CATALOG, job_id=import_job, path="/nonexistent.csv")
    assert get_job(env.sessions, import_job).error == "/nonexistent.csv does not exist"


def test_new_images_are_embedded_for_the_query_model_and_the_next_one(embedded: Embedded) -> None:
    env = embedded
    served = _indexed(env, 20)
    next_model = register_tiny_model(env.settings, env.sessions, seed=1, version="m-next")  # active, not served
    new_images = import_fmnist(env.settings, env.sessions, 5, split=Split.TEST)
    job_id = create_job(env.sessions, JobKind.EMBED)
    env.dispatcher.send(TaskName.EMBED_IMAGES, image_ids=new_images, job_id=job_id)
    job = get_job(env.sessions, job_id)
    assert job.status is JobStatus.SUCCEEDED and (job.progress_done, job.progress_total) == (10, 10)
    assert job.result["models"] == [served.model.version, next_model]
    with session_scope(env.sessions) as s:
        for model_id in (served.model_id, active_model(env.sessions).id):
            assert load_vectors(s, model_id, new_images)[0].tolist() == new_images
    assert _fresh(env) == new_images  # findable with the served model


def test_the_scheduled_reindex_runs_only_when_something_changed(embedded: Embedded) -> None:
    env = embedded
    first = _indexed(env, 20)
    env.dispatcher.send(TaskName.SCHEDULED_REINDEX)
    assert active_index(env.sessions).version == first.version
    import_fmnist(env.settings, env.sessions, 4, split=Split.TEST)  # not embedded yet
    env.dispatcher.send(TaskName.SCHEDULED_REINDEX)
    second = active_index(env.sessions)
    assert second.version != first.version and second.image_count == 24
    register_tiny_model(env.settings, env.sessions, seed=1, version="m-next")
    env.dispatcher.send(TaskName.SCHEDULED_REINDEX)  # the active model has no index yet
    third = active_index(env.sessions)
    assert third.model.version == "m-next" and third.image_count == 24




def test_a_retrain_trains_on_the_catalog_even_after_a_model_trained_on_files(embedded: Embedded) -> None:
    env = embedded
    register_tiny_model(env.settings, env.sessions)
    with session_scope(env.sessions) as s:  # the active model came from `lookalike train` on idx files
        s.execute(update(ModelVersion).values(train_config={
            "data": {"source": "idx", "path": "/data/train.gz", "eval_path": "/data/t10k.gz",
                     "holdout_classes": ["6", "7"]}, "epochs": 3}))
    cfg = retrain_config(env.dispatcher.runtime, None, ["epochs=2"])
    assert (cfg.data.source, cfg.data.label, cfg.data.path, cfg.data.eval_path) == (
        DataSource.CATALOG, LabelKind.CATEGORY, "", "")
    assert cfg.data.holdout_classes == [] and cfg.epochs == 2 and cfg.progress is False


def test_a_retried_retrain_does_not_train_a_registered_candidate_again(embedded: Embedded) -> None:
    env = embedded
    env.dispatcher.runtime.settings = env.settings.replace(promotion_margin=1.0)
    _indexed(env, 60)
    job_id = create_job(env.sessions, JobKind.RETRAIN)
    # The first attempt died right after registering its candidate.
    register_tiny_model(env.settings, env.sessions, seed=3, activate=False, version=f"m-retrain-{job_id}")
    env.dispatcher.send(TaskName.RETRAIN, job_id=job_id, overrides=TINY_TRAINING)
    job = get_job(env.sessions, job_id)
    assert job.status is JobStatus.SUCCEEDED, job.error
    assert job.result["candidate"] == f"m-retrain-{job_id}" and "run_dir" not in job.result
    assert job.result["promoted"] is False and "below the margin 1.0" in job.result["decision"]["reason"]


def test_a_reindex_reports_each_phase_it_goes_through(embedded: Embedded) -> None:
    """Progress names the step (embedding images, building, verifying, publishing), as the jobs
    API, the CLI and the UI show it; every write of the job row is watched as it happens."""
    env = embedded
    _indexed(env, 12)
    import_fmnist(env.settings, env.sessions, 4, split=Split.TEST)  # something to embed first
    seen: list[tuple[JobPhase, int, int]] = []

    def watch(_mapper, _connection, job: Job) -> None:
        if job.kind is JobKind.REINDEX and (not seen or seen[-1] != (job.phase, job.progress_done,
                                                                      job.progress_total)):
            seen.append((job.phase, job.progress_done, job.progress_total))

    event.listen(Job, "before_update", watch)
    try:
        job_id = submit_reindex(env.settings, env.sessions, env.dispatcher, force=True).job_id
    finally:
        event.remove(Job, "before_update", watch)
    job = get_job(env.sessions, job_id)
    assert job.status is JobStatus.SUCCEEDED, job.error
    phases = [p for p, _, _ in seen]
    order = [JobPhase.EMBEDDING, JobPhase.BUILDING, JobPhase.VERIFYING, JobPhase.PUBLISHING]
    assert [p for i, p in enumerate(phases) if p in order and (i == 0 or phases[i - 1] != p)] == order
    assert (JobPhase.EMBEDDING, 4, 4) in seen  # the new images, counted while embedding
    assert job_to_dict(job)["progress"] == {"done": 1, "total": 1, "phase": "publishing"}


def test_every_built_version_carries_checksummed_neighbour_lists(embedded: Embedded) -> None:
    index = _indexed(embedded, 40)
    manifest = IndexManifest.read(Path(index.path))
    assert manifest.neighbours_k == min(embedded.settings.neighbour_list_k, 40)
    assert manifest.neighbours_method == "exact" and manifest.neighbours_recall == 1.0
    lists = NeighbourLists.open(Path(index.path), manifest, verify_checksum=True)
    assert lists is not None and lists.of_row(7)[0][0] == 7
    table = MetadataTable.open(Path(index.path), manifest, verify_checksum=True)
    assert table is not None and table.count == manifest.count
    ids = np.load(Path(index.path) / "ids.npy")
    with session_scope(embedded.sessions) as s:
        expected = {m.image_id: m for m in servable_metadata(s.connection(), ids.tolist())}
    assert [table.meta(row, int(i)) for row, i in enumerate(ids)] == [expected[int(i)] for i in ids]
