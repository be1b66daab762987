"""Typed job state (worker/flows/jobstate.py): the JSON the flows stored before the types read back unchanged."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from core.db import Job, JobKind, JobStatus, session_scope
from core.jobs import create_job, get_job
from core.task_names import TaskName
from tests.worker.conftest import Embedded
from tests.worker.support import TINY_TRAINING, import_fmnist, register_tiny_model
from worker.flows.jobstate import (
    BaselineStep,
    EmbedState,
    GateStep,
    ReindexStep,
    RetrainState,
    SearchStep,
    TaskRecord,
    TrainedStep,
    save_state,
)

METRICS = {"map_at_r": 0.41, "precision_at_1": 0.7, "images": 120}
DECISION = {"promote": True, "chosen": "m-retrain-7", "reason": "beats the active model", "candidate": 0.41}
RETRAIN_ROWS: list[dict[str, Any]] = [
    {},
    {"search": {"rungs": [1, 2]}, "recipe": {"epochs": 2}},
    {"search": {"rungs": [1, 2]}, "recipe": {"epochs": 2}, "run_dir": "/runs/retrain-7"},
    {"run_dir": "/runs/retrain-7", "candidate": "m-retrain-7", "candidate_metrics": METRICS},
    {"candidate": "m-retrain-7", "candidate_metrics": METRICS, "baseline": None, "baseline_metrics": None,
     "baseline_note": "no pretrained weights for a scratch backbone"},
    {"candidate": "m-retrain-7", "candidate_metrics": METRICS, "baseline": "m-retrain-7-pretrained",
     "baseline_metrics": METRICS, "active": None, "active_metrics": None, "decision": DECISION,
     "promoted": False, "promoted_version": None},
    {"candidate": "m-retrain-7", "candidate_metrics": METRICS, "baseline": "m-retrain-7-pretrained",
     "baseline_metrics": METRICS, "active": "m-1", "active_metrics": METRICS, "decision": DECISION,
     "promoted": True, "promoted_version": "m-retrain-7", "reindex": {"index_version": "i-9", "embedded": 3},
     "index_version": "i-9", "a key from a later version": [1]},
]
"""What RETRAIN stored after each of its steps, before the state was typed (and one unknown key)."""


@pytest.mark.parametrize("row", RETRAIN_ROWS)
def test_a_stored_retrain_result_reads_back_unchanged(row: dict[str, Any]) -> None:
    assert RetrainState.from_json(row).to_json() == row


def test_a_retrain_result_says_which_steps_are_done() -> None:
    assert RetrainState.from_json({}) == RetrainState()
    no_baseline = RetrainState.from_json(RETRAIN_ROWS[4])
    assert no_baseline.trained == TrainedStep("m-retrain-7", METRICS)
    # "No baseline" is a finished step, not one still to do.
    assert no_baseline.baseline == BaselineStep(None, None, "no pretrained weights for a scratch backbone")
    assert no_baseline.search is None and no_baseline.gate is None
    done = RetrainState.from_json(RETRAIN_ROWS[-1])
    assert done.gate == GateStep("m-1", METRICS, DECISION, True, "m-retrain-7")
    assert done.reindex == ReindexStep({"index_version": "i-9", "embedded": 3}, "i-9")
    assert done.extra == {"a key from a later version": [1]}
    assert RetrainState.from_json(RETRAIN_ROWS[1]).search == SearchStep({"rungs": [1, 2]}, {"epochs": 2})


@pytest.mark.parametrize("row", [{}, {"dispatched": True, "images": 3, "chunks": 2, "models": ["m-1", "m-2"]},
                                 {"dispatched": True, "images": 3, "chunks": 2, "models": ["m-1"], "failed": 2}])
def test_a_stored_embed_result_reads_back_unchanged(row: dict[str, Any]) -> None:
    state = EmbedState.from_json(row)
    assert state.to_json() == row
    assert state.dispatched is bool(row)


def test_a_task_record_reads_the_params_stored_before_it_was_typed() -> None:
    params = {"reason": "scheduled", "task": {"name": "lookalike.retrain", "kwargs": {"job_id": 4, "reason": "x"}}}
    record = TaskRecord.read(params)
    assert record == TaskRecord(TaskName.RETRAIN, {"job_id": 4, "reason": "x"})
    assert record.into({"reason": "scheduled"}) == params
    assert TaskRecord.read({"reason": "scheduled"}) is None


def test_saving_a_state_merges_it_into_the_job_result(sessions: sessionmaker[Session]) -> None:
    job_id = create_job(sessions, JobKind.RETRAIN)
    save_state(sessions, job_id, RetrainState(run_dir="/runs/r"))
    save_state(sessions, job_id, RetrainState(trained=TrainedStep("m-2", METRICS)))
    assert get_job(sessions, job_id).result == {"run_dir": "/runs/r", "candidate": "m-2", "candidate_metrics": METRICS}
    assert RetrainState.from_json(get_job(sessions, job_id).result).run_dir == "/runs/r"


def test_a_retrain_retried_on_a_result_stored_before_the_types_skips_the_steps_it_records(
        embedded: Embedded) -> None:
    env = embedded
    env.dispatcher.runtime.settings = env.settings.replace(promotion_margin=1.0)  # no promotion, no reindex
    register_tiny_model(env.settings, env.sessions)
    import_fmnist(env.settings, env.sessions, 40)
    job_id = create_job(env.sessions, JobKind.RETRAIN)
    candidate = register_tiny_model(env.settings, env.sessions, seed=3, activate=False,
                                    version=f"m-retrain-{job_id}")
    stored = {"candidate": candidate, "candidate_metrics": {"map_at_r": 0.123}, "baseline": None,
              "baseline_metrics": None, "baseline_note": "written by the attempt that died"}
    with session_scope(env.sessions) as s:  # what the first attempt left, in the format of that time
        s.get(Job, job_id).result = dict(stored)
    env.dispatcher.send(TaskName.RETRAIN, job_id=job_id, overrides=TINY_TRAINING)
    job = get_job(env.sessions, job_id)
    assert job.status is JobStatus.SUCCEEDED, job.error
    assert {k: job.result[k] for k in stored} == stored  # neither trained, scored nor baselined again
    assert "run_dir" not in job.result and job.result["decision"]["candidate"] == 0.123
    assert job.result["promoted"] is False and job.result["promoted_version"] is None
