"""A retrain trains on the feedback and records how many pairs of each source it used."""

from __future__ import annotations

from core.catalog.sample import CLASSES
from core.db import FeedbackJudgement, FeedbackSource, JobKind, JobStatus, session_scope
from core.feedback import Judgement, record_feedback
from core.jobs import create_job, get_job
from core.registry import get_model
from core.task_names import TaskName
from tests.worker.conftest import Embedded
from tests.worker.support import TINY_TRAINING, import_fmnist, register_tiny_model
from trainer.data.catalog import catalog_images


def test_a_retrain_records_the_feedback_it_trained_on(embedded: Embedded) -> None:
    env = embedded
    register_tiny_model(env.settings, env.sessions)
    env.dispatcher.send(TaskName.EMBED_IMAGES, image_ids=import_fmnist(env.settings, env.sessions, 60))
    items = {image.category: image.external_id for image in catalog_images(env.sessions)}  # one per category
    pullover, coat, shirt, bag = (items[CLASSES[i][0]] for i in (2, 4, 6, 8))
    with session_scope(env.sessions) as s:
        record_feedback(s, [
            Judgement(pullover, coat, FeedbackJudgement.DISSIMILAR, FeedbackSource.MERCHANDISER),
            Judgement(coat, pullover, FeedbackJudgement.SIMILAR, FeedbackSource.CLICK),  # outranked
            Judgement(shirt, pullover, FeedbackJudgement.SIMILAR, FeedbackSource.CLICK),
            Judgement(bag, shirt, FeedbackJudgement.DISSIMILAR, FeedbackSource.SKIP),  # bag is held out
        ])
    job_id = create_job(env.sessions, JobKind.RETRAIN)
    env.dispatcher.send(TaskName.RETRAIN, job_id=job_id, overrides=TINY_TRAINING, search="off")
    job = get_job(env.sessions, job_id)
    assert job.status is JobStatus.SUCCEEDED, job.error
    assert job.result["config"]["feedback"]["enabled"] is True
    feedback = get_model(env.sessions, job.result["candidate"]).metrics["holdout"]["feedback"]
    assert feedback["pairs"] == 2 and feedback["dropped"] == 1
    assert feedback["by_source"] == {"merchandiser": 1, "click": 1, "skip": 0}
    # the job result says the same, with the weights the run gave the feedback
    used = job.result["feedback"]
    assert used["enabled"] is True and used["weight"] == 1.0
    assert used["source_weights"] == {"merchandiser": 1.0, "click": 0.3, "skip": 0.1}
    assert {k: used[k] for k in ("pairs", "similar", "dissimilar", "by_source", "dropped")} == {
        "pairs": 2, "similar": 1, "dissimilar": 1, "by_source": {"merchandiser": 1, "click": 1, "skip": 0},
        "dropped": 1}
