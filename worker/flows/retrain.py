"""RETRAIN: train -> evaluate on the fixed holdout -> register -> promote if better -> reindex -> publish.

Every step records itself in the job's result, so the decision and the metrics
are kept whatever happens, and a retry (the worker was killed) skips what is
already done: training resumes its run directory from the last finished epoch,
and a registered candidate is not trained or registered again. A promotion
reindexes with the candidate under the reindex lock; publish then makes the new
index and its model active in one transaction. Until then the old model and
index keep serving, and if that reindex fails they simply stay.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from core.config import Settings
from core.db import JobKind
from core.embedding import load_model, resolve_device
from core.jobs import create_job, fail_job, finish_job, get_job, start_job, update_progress
from core.registry import RegistryError, active_model, register_model, set_model_metrics
from trainer.config import DataSource, TrainConfig
from trainer.data import DataContext
from trainer.data.build import build_eval_data
from trainer.evaluate import evaluate_holdout
from trainer.state import RunPaths
from trainer.train import train
from worker.flows.errors import FlowError
from worker.flows.jobstate import merge_result, touch_job
from worker.flows.promotion import decide
from worker.flows.reindex import MAX_ATTEMPTS, reindex_locked
from worker.lock import LockBusy, holding, reindex_lock
from worker.runtime import Runtime

log = logging.getLogger(__name__)

PROMOTION_LOCK_WAIT_SECONDS = 3600.0
"""A promotion waits this long for a running reindex: the training it follows cost far more."""


class RetrainError(FlowError):
    pass


def retrain_config(rt: Runtime, config: dict[str, Any] | None, overrides: list[str]) -> TrainConfig:
    """The config to train with: ``config``, else the active model's, plus overrides; on the catalog."""
    base: dict[str, Any] = dict(config or {})
    current = active_model(rt.sessions)
    if not base and current is not None and current.train_config:
        base = dict(current.train_config)
    forced = [f"data.source={DataSource.CATALOG.value}", "progress=false"]
    try:
        cfg = TrainConfig.from_dict(base).with_overrides([f"device={rt.settings.device.value}", *overrides])
        return cfg.with_overrides(forced)
    except ValueError as exc:
        raise RetrainError(f"invalid training config: {exc}") from exc


def holdout_metrics(settings: Settings, rt: Runtime, cfg: TrainConfig, checkpoint: Path) -> dict[str, Any]:
    """Leave-one-out metrics of a checkpoint on the config's fixed holdout of the catalog."""
    model, _ = load_model(checkpoint)
    dataset = build_eval_data(cfg.data, model.spec, DataContext(settings, rt.sessions))
    if dataset is None:
        raise RetrainError("the training config leaves no holdout to compare models on "
                           "(set data.holdout_fraction or data.holdout_classes)")
    device = resolve_device(settings.device)
    metrics = evaluate_holdout(model.to(device), dataset, device=device, ks=cfg.ks,
                               batch_size=cfg.eval_batch_size)
    return metrics.to_dict()


def _install_checkpoint(source: Path, models_dir: Path, version: str) -> Path:
    """Copy a run's checkpoint to ``models/<version>.pt`` (temp name, then rename)."""
    models_dir.mkdir(parents=True, exist_ok=True)
    target = models_dir / f"{version}.pt"
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=models_dir)
    os.close(fd)
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def run_retrain(rt: Runtime, job_id: int | None = None, config: dict[str, Any] | None = None,
                overrides: list[str] | None = None, reason: str = "requested") -> dict[str, Any]:
    """RETRAIN for ``job_id`` (created when beat sends none)."""
    overrides = list(overrides or [])
    if job_id is None:
        job_id = create_job(rt.sessions, JobKind.RETRAIN, {"reason": reason, "overrides": overrides})
    job = get_job(rt.sessions, job_id)
    if job.status.finished:
        return job.result
    if job.attempts >= MAX_ATTEMPTS:
        error = f"gave up after {job.attempts} attempts (the worker died each time)"
        fail_job(rt.sessions, job_id, error)
        return {"error": error}
    start_job(rt.sessions, job_id)
    try:
        result = _retrain(rt, job_id, job.result, config, overrides)
    except (FlowError, LockBusy, RegistryError) as exc:
        fail_job(rt.sessions, job_id, str(exc), result=get_job(rt.sessions, job_id).result)
        return {"error": str(exc)}
    except Exception as exc:
        fail_job(rt.sessions, job_id, f"{type(exc).__name__}: {exc}", result=get_job(rt.sessions, job_id).result)
        raise
    finish_job(rt.sessions, job_id, result)
    return result


def _retrain(rt: Runtime, job_id: int, done: dict[str, Any], config: dict[str, Any] | None,
             overrides: list[str]) -> dict[str, Any]:
    settings, sessions = rt.settings, rt.sessions
    cfg = retrain_config(rt, config, overrides)
    incumbent = active_model(sessions)
    candidate = done.get("candidate")
    if candidate is None:
        run_dir = settings.resolved_artifacts_dir / "runs" / f"retrain-{job_id}"
        update_progress(sessions, job_id, 0, cfg.epochs)
        try:
            trained = train(cfg, run_dir, DataContext(settings, sessions),
                            resume=RunPaths(run_dir).state.exists(),
                            on_epoch_end=lambda record: update_progress(sessions, job_id, int(record["epoch"])))
        except ValueError as exc:  # the catalog does not fit the config (ConfigError is one too)
            raise RetrainError(f"training could not start: {exc}") from exc
        metrics = holdout_metrics(settings, rt, cfg, trained.checkpoint)
        candidate = f"m-retrain-{job_id}"
        path = _install_checkpoint(trained.checkpoint, settings.models_dir, candidate)
        register_model(sessions, checkpoint_path=path, spec=trained.spec.to_dict(), train_config=cfg.to_dict(),
                       metrics=metrics, version=candidate, notes=f"retrain job {job_id}")
        done = merge_result(sessions, job_id, candidate=candidate, candidate_metrics=metrics,
                            run_dir=str(run_dir))

    active_metrics = None
    if incumbent is not None and incumbent.version != candidate:
        active_metrics = holdout_metrics(settings, rt, cfg, Path(incumbent.checkpoint_path))
    decision = decide(done["candidate_metrics"], active_metrics, settings.promotion_margin)
    set_model_metrics(sessions, candidate, {"promotion": decision.to_dict()})
    done = merge_result(sessions, job_id, active=incumbent.version if incumbent else None,
                        active_metrics=active_metrics, decision=decision.to_dict(), promoted=False)
    log.info("retrain job %d: %s -> %s", job_id, candidate, decision.reason)
    if not decision.promote:
        return done

    lock = reindex_lock(settings, owner=f"retrain-job-{job_id}")
    with holding(lock, wait_seconds=PROMOTION_LOCK_WAIT_SECONDS, on_beat=lambda: touch_job(sessions, job_id)) as held:
        reindexed = reindex_locked(rt, None, force=True, model_version=candidate, lock_lost=lambda: held.lost)
    return merge_result(sessions, job_id, promoted=True, reindex=reindexed,
                        index_version=reindexed.get("index_version"))
