"""`lookalike reindex|retrain|jobs|worker` in the embedded setup (no broker: jobs run in-process)."""

from __future__ import annotations

import json
from pathlib import Path

from alembic import command
from click.testing import CliRunner

from cli.main import lookalike
from core.config import Settings
from core.db import make_engine, make_session_factory
from migrations import alembic_config
from tests.worker.support import import_fmnist, register_tiny_model


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
    failed = runner.invoke(lookalike, ["retrain", "--set", "epochs=0"], env=env)
    assert failed.exit_code == 1
    assert "job 1 failed: invalid training config: epochs must be >= 1" in failed.output


def test_worker_and_beat_need_a_broker(tmp_path: Path) -> None:
    env, runner = _home(tmp_path), CliRunner()
    for command_name in ("worker", "beat"):
        refused = runner.invoke(lookalike, [command_name], env=env)
        assert refused.exit_code == 1 and "no broker configured: set LOOKALIKE_BROKER_URL" in refused.output
    bad = runner.invoke(lookalike, ["worker", "-Q", "embed,gpu"], env={**env, "LOOKALIKE_BROKER_URL": "redis://x"})
    assert bad.exit_code == 2 and "queues must be among" in bad.output
