"""Training runs through a shared object store (a real SeaweedFS): trained on host A, read on host B.

A finished run directory is published as ``runs/<name>/`` (files, then FILES.json);
host B, with its own home and cache and none of A's files, reads it with
``lookalike store run``. A run killed mid-training publishes nothing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml
from alembic import command
from click.testing import CliRunner
from sqlalchemy import select

from cli.main import lookalike
from core.artifacts import open_store
from core.artifacts.versions import FILE_LIST
from core.config import Settings
from core.db import Job, JobKind, JobStatus, make_engine, make_session_factory, session_scope
from core.registry import activate_model
from core.runs import RUNS_PREFIX, RunNotFound, open_run, run_prefix
from core.task_names import TaskName
from migrations import alembic_config
from tests.conftest import FASHION_MNIST_DIR
from tests.support.processes import REPO, settings_env, wait_until
from tests.support.servers import ObjectStoreServer
from tests.trainer.test_train import fmnist_config
from tests.worker.conftest import tuned
from tests.worker.support import TINY_SPEC, TINY_TRAINING, import_fmnist
from trainer.register import register_untrained
from worker.local import InProcessDispatcher

pytestmark = [pytest.mark.objectstore, pytest.mark.slow]


def _hosts(tmp_path: Path, server: ObjectStoreServer) -> tuple[Settings, Settings]:
    """Host A and host B: one SQLite database and one store prefix, each its own home and cache."""
    a = tuned(Settings(home=tmp_path / "host-a", database_url=f"sqlite:///{tmp_path / 'shared.db'}",
                       artifact_store=f"s3://{server.bucket}/runs-{uuid.uuid4().hex[:8]}",
                       s3_endpoint_url=server.endpoint_url, s3_access_key_id="test", s3_secret_access_key="test"))
    return a, a.replace(home=tmp_path / "host-b")


def _cli(settings: Settings, *args: str) -> str:
    result = CliRunner().invoke(lookalike, list(args), env=settings.to_env(), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _files(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in directory.rglob("*") if p.is_file()}


def test_a_retrain_on_host_a_is_published_and_read_on_host_b(tmp_path: Path,
                                                             object_store_server: ObjectStoreServer) -> None:
    a, b = _hosts(tmp_path, object_store_server)
    command.upgrade(alembic_config(a.resolved_database_url), "head")
    engine = make_engine(a)
    sessions = make_session_factory(engine)
    dispatcher = InProcessDispatcher(a)
    try:
        activate_model(sessions, register_untrained(sessions, a, TINY_SPEC, version="m-runs"))
        import_fmnist(a, sessions, 60)
        dispatcher.send(TaskName.RETRAIN, reason="test", overrides=TINY_TRAINING)  # runs here, on host A
        with session_scope(sessions) as s:
            job = s.scalars(select(Job).where(Job.kind == JobKind.RETRAIN)).one()
            assert job.status is JobStatus.SUCCEEDED, job.error
            name = f"retrain-{job.id}"
    finally:
        dispatcher.close()
        engine.dispose()

    on_a = a.resolved_artifacts_dir / "runs" / name
    assert (on_a / "metrics.jsonl").is_file() and (on_a / "checkpoint.pt").is_file()
    keys = set(open_store(a).list_keys(run_prefix(name)))
    assert keys == {run_prefix(name) + rel for rel in [*_files(on_a), FILE_LIST]}
    # Host B is another machine: host A's run directory is not there (moved aside, for the reference).
    reference = _files(on_a.rename(tmp_path / "host-a-run"))

    assert json.loads(_cli(b, "store", "status", "--json"))["runs"] == [name]
    shown = json.loads(_cli(b, "store", "run", name, "--json"))
    epochs = [json.loads(line) for line in reference["metrics.jsonl"].decode().splitlines()]
    assert shown["epochs"] == epochs and len(epochs) >= 1
    assert shown["files"] == {rel: len(data) for rel, data in reference.items()}
    assert "run " + name in _cli(b, "store", "run", name)
    _cli(b, "store", "run", name, "--to", str(tmp_path / "copy"))
    assert _files(tmp_path / "copy") == reference
    with open_run(b, name) as files:  # from B's own cache, every file checked against FILES.json
        assert all(path.is_relative_to(b.resolved_cache_dir) for path in files.values())
    assert not (b.resolved_artifacts_dir / "runs").exists()


def test_a_run_killed_mid_training_publishes_nothing(tmp_path: Path, object_store_server: ObjectStoreServer) -> None:
    a, b = _hosts(tmp_path, object_store_server)
    config = tmp_path / "fm.yaml"
    config.write_text(yaml.safe_dump(fmnist_config(
        FASHION_MNIST_DIR, "epochs=500", "steps_per_epoch=2", "classes_per_batch=3", "images_per_class=4",
        "data.max_per_class=40", "data.eval_max_per_class=10").to_dict()))
    run_dir = a.models_dir / "runs" / "m-killed"
    log = tmp_path / "train.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "cli", "train", "--config", str(config), "--version", "m-killed", "--no-register"],
        cwd=REPO, env=settings_env(a), start_new_session=True, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: (run_dir / "metrics.jsonl").is_file()
                   and len((run_dir / "metrics.jsonl").read_text().splitlines()) >= 2 or process.poll() is not None,
                   120, 0.05, "two epochs recorded")
        assert process.poll() is None, log.read_text()
        os.killpg(process.pid, signal.SIGKILL)  # the host dies mid-run
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
    assert (run_dir / "train_state.pt").is_file()  # resumable here, on host A
    assert list(open_store(a).list_keys(RUNS_PREFIX)) == []  # and nothing of it in the store
    with pytest.raises(RunNotFound, match="m-killed"):
        with open_run(b, "m-killed"):
            pass
