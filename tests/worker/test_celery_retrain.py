"""Retrain through a real worker: the decision is recorded either way, promotion publishes."""

from __future__ import annotations

import pytest

from core.db import JobKind, JobStatus, ModelStatus
from core.jobs import create_job
from core.registry import active_index, active_model, get_model
from core.task_names import TaskName
from tests.worker.conftest import CeleryStack
from tests.worker.support import import_fmnist, register_tiny_model, wait_for_job, wait_until

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.slow]

TINY_TRAINING = [
    "model.input_size=32", "model.embedding_dim=32", "epochs=1", "steps_per_epoch=3",
    "classes_per_batch=4", "images_per_class=2", "data.label=category",
    "data.holdout_classes=[trouser, bag, sandal]", "eval_batch_size=64", "amp=false",
]


def _retrain(stack: CeleryStack) -> tuple[str, str, dict]:
    """An indexed catalog, then one retrain job; (old model, old index, finished job result)."""
    old_model = register_tiny_model(stack.settings, stack.sessions)
    ids = import_fmnist(stack.settings, stack.sessions, 150)
    stack.dispatcher.send(TaskName.EMBED_IMAGES, image_ids=ids)
    old_index = wait_until(lambda: active_index(stack.sessions), 90, what="first index").version
    job_id = create_job(stack.sessions, JobKind.RETRAIN)
    stack.dispatcher.send(TaskName.RETRAIN, job_id=job_id, overrides=TINY_TRAINING)
    job = wait_for_job(stack.sessions, job_id, timeout=120)
    assert job.status is JobStatus.SUCCEEDED, f"{job.error}\n{stack.worker.log()[-3000:]}"
    return old_model, old_index, job.result


@pytest.mark.parametrize("celery_stack", [{"promotion_margin": 1.0}], indirect=True)
def test_a_retrain_that_does_not_beat_the_active_model_is_recorded_not_promoted(celery_stack: CeleryStack) -> None:
    old_model, old_index, result = _retrain(celery_stack)
    decision = result["decision"]
    assert result["promoted"] is False and decision["promote"] is False
    assert decision["candidate"] == result["candidate_metrics"]["map_at_r"]
    assert decision["active"] == result["active_metrics"]["map_at_r"] and decision["margin"] == 1.0
    candidate = get_model(celery_stack.sessions, result["candidate"])
    assert candidate.status is ModelStatus.CANDIDATE
    assert candidate.metrics["map_at_r"] == decision["candidate"]
    assert candidate.metrics["promotion"]["promote"] is False
    assert active_model(celery_stack.sessions).version == old_model
    assert active_index(celery_stack.sessions).version == old_index


@pytest.mark.parametrize("celery_stack", [{"promotion_margin": -1.0}], indirect=True)
def test_a_retrain_that_beats_the_active_model_is_promoted_and_published(celery_stack: CeleryStack) -> None:
    old_model, old_index, result = _retrain(celery_stack)
    assert result["promoted"] is True and result["decision"]["promote"] is True
    index = active_index(celery_stack.sessions)
    assert index.version == result["index_version"] != old_index
    assert index.model.version == result["candidate"] == active_model(celery_stack.sessions).version
    assert index.image_count == 150
    assert get_model(celery_stack.sessions, old_model).status is ModelStatus.RETIRED
