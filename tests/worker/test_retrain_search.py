"""A retrain that searches its recipe and must beat the frozen pretrained features it started from."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from core.db import JobKind, JobStatus, ModelStatus
from core.jobs import create_job, get_job
from core.registry import active_index, active_model, get_model
from core.task_names import TaskName
from tests.worker.conftest import Embedded
from tests.worker.support import TINY_TRAINING, import_fmnist, register_tiny_model


def _catalog(env: Embedded, n: int = 160) -> str:
    version = register_tiny_model(env.settings, env.sessions)
    env.dispatcher.send(TaskName.EMBED_IMAGES, image_ids=import_fmnist(env.settings, env.sessions, n))
    assert active_index(env.sessions) is not None
    return version


def _space(tmp_path: Path, candidates: list[dict]) -> str:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({"rungs": [1.0], "validation_fraction": 0.3, "candidates": candidates}))
    return str(path)


def _retrain(env: Embedded, overrides: list[str], search: str) -> dict:
    job_id = create_job(env.sessions, JobKind.RETRAIN)
    env.dispatcher.send(TaskName.RETRAIN, job_id=job_id, overrides=overrides, search=search)
    job = get_job(env.sessions, job_id)
    assert job.status is JobStatus.SUCCEEDED, job.error
    assert job.progress_done == job.progress_total > 0
    return job.result


def test_the_searched_recipe_is_trained_and_the_decision_names_every_comparison(
        embedded: Embedded, tmp_path: Path) -> None:
    env = embedded
    env.dispatcher.runtime.settings = env.settings.replace(promotion_margin=-1.0)
    old = _catalog(env)
    space = _space(tmp_path, [{"name": "stuck", "overrides": ["optim.lr=1e-12"]},
                              {"name": "learns", "overrides": ["optim.lr=3e-3", "loss.miner=batch_all"]}])
    result = _retrain(env, [*TINY_TRAINING, "epochs=2", "steps_per_epoch=6"], space)

    search = result["search"]
    scores = {c["name"]: c["curve"][-1]["map_at_r"] for c in search["candidates"]}
    assert search["winner"] == max(scores, key=scores.get)
    trained = get_model(env.sessions, result["candidate"])
    winner_overrides = dict(o.split("=") for o in search["winner_overrides"])
    assert trained.train_config["optim"]["lr"] == float(winner_overrides["optim.lr"])
    assert trained.train_config["data"]["validation_fraction"] == 0.0  # the final run sees every training class
    assert (Path(search["report_dir"]) / "search.png").is_file()
    # The small CNN has no pretrained weights: no baseline, and the job says why.
    assert result["baseline"] is None and "not pretrained" in result["baseline_note"]
    decision = result["decision"]
    assert [(c["a_role"], c["b_role"]) for c in decision["comparisons"]] == [("trained", "active")]
    assert decision["promote"] and result["promoted_version"] == result["candidate"] == decision["chosen"]
    assert active_model(env.sessions).version == result["candidate"] != old


@pytest.mark.slow
def test_when_nothing_trained_beats_the_frozen_features_they_are_served(embedded: Embedded, tmp_path: Path) -> None:
    env = embedded
    _catalog(env)
    lite = ["model.backbone=efficientnet_lite0", "model.pretrained=imagenet", "model.embedding_dim=32",
            "model.input_size=32", "data.preload=true"]
    # A recipe that diverges (AdamW at lr 50 moves every weight by ~50) wrecks the pretrained trunk.
    result = _retrain(env, [*TINY_TRAINING, *lite, "optim.lr=50", "optim.backbone_lr=50"], "off")
    assert "search" not in result
    decision = result["decision"]
    trained, baseline = result["candidate_metrics"]["map_at_r"], result["baseline_metrics"]["map_at_r"]
    assert baseline > trained
    first = decision["comparisons"][0]
    assert (first["a"], first["b"], first["a_wins"]) == (result["candidate"], result["baseline"], False)
    assert first["a_score"] == trained and first["b_score"] == baseline
    assert decision["challenger"] == result["baseline"] and decision["challenger_role"] == "pretrained"
    assert "nothing trained beat the frozen pretrained features" in decision["reason"]
    if decision["promote"]:  # the random tiny model it replaces may or may not be worse still
        assert active_model(env.sessions).version == result["baseline"] == result["promoted_version"]
        assert active_index(env.sessions).model.version == result["baseline"]
    assert get_model(env.sessions, result["baseline"]).status in (ModelStatus.ACTIVE, ModelStatus.CANDIDATE)
    assert get_model(env.sessions, result["baseline"]).metrics["promotion"]["challenger_role"] == "pretrained"
