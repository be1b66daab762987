"""Shadow evaluation: a retrain replays the logged queries and the feedback pairs before it promotes."""

from __future__ import annotations

from typing import Any

import numpy as np
from sqlalchemy import update

from core.db import FeedbackJudgement, FeedbackSource, Job, JobKind, JobStatus, session_scope
from core.embeddings_store import snapshot_vectors
from core.feedback import Judgement, record_feedback
from core.jobs import create_job, get_job, list_jobs
from core.query_log import log_query
from core.registry import active_index, active_model, get_model
from core.task_names import TaskName
from service.app import create_app
from tests.worker.conftest import Embedded
from tests.worker.support import TINY_TRAINING, import_fmnist, register_tiny_model
from trainer.data.catalog import item_of_images

# The candidate must not learn the marks here: the tests choose pairs by the active model's
# answers and check what a model that never saw them does with them.
NO_FEEDBACK_TRAINING = [*TINY_TRAINING, "feedback.enabled=false"]


def _catalog(env: Embedded, n: int = 60) -> tuple[str, list[str], np.ndarray]:
    """An active untrained model (seeded apart from the candidate's start), ``n`` indexed items,
    and the active model's item-by-item distances (one photo per item)."""
    version = register_tiny_model(env.settings, env.sessions, seed=5)
    env.dispatcher.send(TaskName.EMBED_IMAGES, image_ids=import_fmnist(env.settings, env.sessions, n))
    model = get_model(env.sessions, version)
    with session_scope(env.sessions) as s:
        snapshot = snapshot_vectors(s, model.id)
    external_of = item_of_images(env.sessions)
    items = [external_of[int(i)] for i in snapshot.image_ids]
    v = snapshot.vectors.astype(np.float64)
    distances = np.sqrt(((v[:, None, :] - v[None, :, :]) ** 2).sum(axis=2))  # the tiny spec is euclidean
    np.fill_diagonal(distances, np.inf)
    return version, items, distances


def _log(env: Embedded, items: list[str]) -> None:
    for item in items:
        assert log_query(env.sessions, item, 10, env.settings.query_log_max_rows)


def _mark(env: Embedded, pairs: list[tuple[str, str]], judgement: FeedbackJudgement) -> None:
    with session_scope(env.sessions) as s:
        record_feedback(s, [Judgement(q, r, judgement, FeedbackSource.MERCHANDISER) for q, r in pairs])


def _retrain(env: Embedded, **settings: Any) -> dict:
    env.dispatcher.runtime.settings = env.settings.replace(promotion_margin=-1.0, **settings)
    job_id = create_job(env.sessions, JobKind.RETRAIN)
    env.dispatcher.send(TaskName.RETRAIN, job_id=job_id, overrides=NO_FEEDBACK_TRAINING, search="off")
    job = get_job(env.sessions, job_id)
    assert job.status is JobStatus.SUCCEEDED, job.error
    return job.result


def _listed_promotion(env: Embedded, version: str) -> dict:
    """The decision as GET /api/v1/models shows it with the model."""
    app = create_app(env.settings, watch_index=False)
    try:
        models = app.test_client().get("/api/v1/models").json["models"]
    finally:
        app.extensions["lookalike"].close()
    return next(m for m in models if m["version"] == version)["metrics"]["promotion"]


def test_a_candidate_that_breaks_the_feedback_pairs_is_refused(embedded: Embedded) -> None:
    env = embedded
    old, items, distances = _catalog(env)
    _log(env, items)
    # "good match" on each of 20 items' nearest neighbour under the active model: it ranks all 20 first
    marked = [(items[i], items[int(np.argmin(distances[i]))]) for i in range(20)]
    _mark(env, marked, FeedbackJudgement.SIMILAR)
    result = _retrain(env, shadow_min_queries=20, shadow_k=1, shadow_min_overlap=0.0)

    decision = result["decision"]
    shadow = decision["shadow"]
    assert shadow["queries"] == 60 and shadow["logged"] == 60 and shadow["k"] == 1
    assert shadow["feedback_pairs"] == 20 and shadow["active_correct"] == 20
    assert shadow["by_judgement"]["similar"] == {"pairs": 20, "candidate": shadow["candidate_correct"], "active": 20}
    assert shadow["candidate_correct"] < 19  # below 20 - 0.05 x 20
    assert shadow["passed"] is False
    assert [c["passed"] for c in shadow["checks"]] == [False, True]  # the feedback check refused it
    assert shadow["holdout"]["candidate"] == result["candidate_metrics"]["map_at_r"]
    assert not decision["promote"] and decision["chosen"] is None and "shadow check refuses" in decision["reason"]
    assert result["promoted"] is False and "reindex" not in result
    assert active_model(env.sessions).version == old
    assert [(c["a_role"], c["b_role"]) for c in decision["comparisons"]] == [("trained", "active")]
    assert _listed_promotion(env, result["candidate"])["shadow"] == shadow


def test_a_good_candidate_is_promoted_with_the_shadow_numbers(embedded: Embedded) -> None:
    env = embedded
    old, items, distances = _catalog(env)
    _log(env, items[:30])
    # "not similar" on 10 items' farthest item under the active model: far outside any top 3
    marked = [(items[i], items[int(np.argmax(np.where(np.isinf(distances[i]), -1, distances[i])))])
              for i in range(10)]
    _mark(env, marked, FeedbackJudgement.DISSIMILAR)
    result = _retrain(env, shadow_min_queries=20, shadow_k=3, shadow_min_overlap=0.0,
                      shadow_feedback_tolerance=0.3)

    decision = result["decision"]
    shadow = decision["shadow"]
    assert shadow["passed"] is True and shadow["skipped"] is None
    assert shadow["queries"] == 30 and 0.0 <= shadow["overlap"] <= 1.0 and 0.0 <= shadow["jaccard"] <= 1.0
    assert shadow["feedback_pairs"] == 10 and shadow["active_correct"] == 10
    assert shadow["by_judgement"]["dissimilar"]["pairs"] == 10 and shadow["by_judgement"]["similar"]["pairs"] == 0
    assert shadow["candidate_correct"] >= 7
    assert shadow["rule"] == {"queries": 500, "min_queries": 20, "k": 3, "min_overlap": 0.0,
                              "low_overlap_gain": 0.05, "feedback_tolerance": 0.3}
    assert decision["promote"] and "shadow check passed" in decision["reason"]
    assert result["promoted_version"] == result["candidate"] == active_model(env.sessions).version != old
    listed = _listed_promotion(env, result["candidate"])
    assert listed["shadow"] == shadow and listed["promote"] is True
    # the feedback the candidate was given: none, since this retrain switched it off
    assert result["feedback"]["enabled"] is False and result["feedback"]["pairs"] == 0


def test_too_few_logged_queries_skip_the_shadow_check_and_say_so(embedded: Embedded) -> None:
    env = embedded
    old, items, _ = _catalog(env, 40)
    _log(env, [items[0], items[1], items[0], items[2]])
    result = _retrain(env)  # the default minimum, 50 distinct items

    decision = result["decision"]
    shadow = decision["shadow"]
    assert shadow["logged"] == 4 and shadow["passed"] is None and shadow["checks"] == []
    assert "only 3 distinct logged query items (of 4 rows)" in shadow["skipped"]
    assert "LOOKALIKE_SHADOW_MIN_QUERIES=50" in shadow["skipped"]
    assert decision["promote"] and "shadow check skipped" in decision["reason"]
    assert active_model(env.sessions).version == result["candidate"] != old


def test_a_retry_carries_out_the_saved_decision_instead_of_deciding_again(embedded: Embedded) -> None:
    env = embedded
    _, items, _ = _catalog(env, 40)
    _log(env, items)
    result = _retrain(env, shadow_min_queries=20, shadow_min_overlap=0.0)
    assert result["decision"]["promote"] and result["decision"]["shadow"]["passed"] is True
    # What a worker killed after the publish but before the job saved its reindex leaves: the job
    # running, its result up to the decision, and the candidate already the active model.
    job_id = next(j.id for j in list_jobs(env.sessions, kind=JobKind.RETRAIN))
    saved = {k: v for k, v in result.items() if k not in ("reindex", "index_version")}
    with session_scope(env.sessions) as s:
        s.execute(update(Job).where(Job.id == job_id).values(
            status=JobStatus.RUNNING, finished_at=None, result={**saved, "promoted": False}))
    env.dispatcher.send(TaskName.RETRAIN, job_id=job_id, overrides=NO_FEEDBACK_TRAINING, search="off")
    job = get_job(env.sessions, job_id)
    assert job.status is JobStatus.SUCCEEDED, job.error
    # deciding again would compare the now-active candidate with nothing and drop the shadow numbers
    assert job.result["decision"] == result["decision"]
    assert job.result["promoted"] is True and job.result["index_version"] != result["index_version"]
    assert active_index(env.sessions).version == job.result["index_version"]
