"""`lookalike reindex|retrain|jobs|worker` in the embedded setup (no broker: jobs run in-process)."""

from __future__ import annotations

import json
from pathlib import Path

from alembic import command
from click.testing import CliRunner
from sqlalchemy import select

from cli.main import lookalike
from core.config import Settings
from core.db import ModelVersion, make_engine, make_session_factory, session_scope
from migrations import alembic_config
from tests.worker.support import TINY_TRAINING, import_fmnist, register_tiny_model


def _home(tmp_path: Path) -> dict[str, str]:
    settings = Settings(home=tmp_path / "home", annoy_trees=20, torch_threads=1)
    command.upgrade(alembic_config(settings.resolved_database_url), "head")
    engine = make_engine(settings)
    sessions = make_session_factory(engine)
    register_tiny_model(settings, sessions)
    import_fmnist(settings, sessions, 30)
    engine.dispose()
    return {"LOOKALIKE_HOME": str(settings.home), "LOOKALIKE_ANNOY_TREES": "20", "LOOKALIKE_TORCH_THREADS": "1",
            "LOOKALIKE_BROKER_URL": ""}


def test_reindex_and_jobs(tmp_path: Path) -> None:
    env, runner = _home(tmp_path), CliRunner()
    built = runner.invoke(lookalike, ["reindex"], env=env)
    assert built.exit_code == 0, built.output
    assert built.output.startswith("queued reindex job 1\n") and "job 1: reindex succeeded" in built.output
    result = json.loads(built.output[built.output.index("{"):])
    assert result["image_count"] == 30 and result["embedded"] == 30

    again = runner.invoke(lookalike, ["reindex"], env=env)
    assert again.exit_code == 0 and '"skipped": "up to date"' in again.output

    listed = runner.invoke(lookalike, ["jobs", "list", "--kind", "reindex"], env=env)
    assert listed.exit_code == 0 and len(listed.output.splitlines()) == 2
    assert all("reindex succeeded" in line for line in listed.output.splitlines())
    shown = runner.invoke(lookalike, ["jobs", "show", "1"], env=env)
    assert json.loads(shown.output)["result"]["index_version"] == result["index_version"]
    missing = runner.invoke(lookalike, ["jobs", "show", "99"], env=env)
    assert missing.exit_code == 1 and "job 99 does not exist" in missing.output


def test_a_failed_job_exits_1_with_its_error(tmp_path: Path) -> None:
    env, runner = _home(tmp_path), CliRunner()
    # a valid config the catalog cannot satisfy: only the worker can tell, so the job fails
    failed = runner.invoke(lookalike, ["retrain", "--set", "data.min_images_per_class=1000"],
                           env={**env, "LOOKALIKE_RETRAIN_SEARCH": "off"})
    assert failed.exit_code == 1, failed.output
    assert "job 1 failed: training could not start: " in failed.output


def test_a_bad_retrain_override_is_refused_before_a_job_is_queued(tmp_path: Path) -> None:
    env, runner = _home(tmp_path), CliRunner()
    for override, named in (("loss.marign=0.3", "unknown key(s) ['loss.marign']"),
                            ("epochs=0", "epochs must be >= 1"),
                            ("data.source=folder", "data.source cannot be overridden")):
        refused = runner.invoke(lookalike, ["retrain", "--set", override], env=env)
        assert refused.exit_code == 2, refused.output
        assert "Invalid value for --set: " in refused.output and named in refused.output
    assert runner.invoke(lookalike, ["jobs", "list"], env=env).output == "no jobs\n"


def test_retrain_overrides_go_on_top_of_the_active_models_config(tmp_path: Path) -> None:
    env, runner = _home(tmp_path), CliRunner()
    settings = Settings(home=Path(env["LOOKALIKE_HOME"]))
    engine = make_engine(settings)
    with session_scope(make_session_factory(engine)) as s:
        s.scalars(select(ModelVersion)).one().train_config = {"loss": {"margin": 0.5, "miner": "batch_all"},
                                                              "optim": {"lr": 0.002}}
    engine.dispose()
    args = ["retrain", *(a for o in [*TINY_TRAINING, "loss.margin=0.3"] for a in ("--set", o))]
    done = runner.invoke(lookalike, args, env={**env, "LOOKALIKE_RETRAIN_SEARCH": "off",
                                              "LOOKALIKE_PROMOTION_MARGIN": "1.0"})
    assert done.exit_code == 0, done.output
    config = json.loads(runner.invoke(lookalike, ["jobs", "show", "1"], env=env).output)["result"]["config"]
    assert config["loss"]["margin"] == 0.3 and config["epochs"] == 1  # the overrides
    assert config["loss"]["miner"] == "batch_all" and config["optim"]["lr"] == 0.002  # the active model's


def test_worker_and_beat_need_a_broker(tmp_path: Path) -> None:
    env, runner = _home(tmp_path), CliRunner()
    for command_name in ("worker", "beat"):
        refused = runner.invoke(lookalike, [command_name], env=env)
        assert refused.exit_code == 1 and "no broker configured: set LOOKALIKE_BROKER_URL" in refused.output
    bad = runner.invoke(lookalike, ["worker", "-Q", "embed,gpu"], env={**env, "LOOKALIKE_BROKER_URL": "redis://x"})
    assert bad.exit_code == 2 and "queues must be among" in bad.output
