"""RETRAIN: search a recipe -> train it -> build the frozen baseline -> compare on the fixed
holdout -> promote the best if it beats the active model -> reindex -> publish.

1. **Search** (unless off): the candidate recipes of ``settings.retrain_search`` (or the
   job's ``search``) by successive halving on a class-disjoint validation split of the
   training classes (trainer/search); the holdout is not read.
2. **Train** the winning recipe on every training class and register it.
3. **Baseline**: the backbone's frozen ImageNet features under a PCA head
   (trainer/baseline.py), registered too; none for a backbone without pretrained weights.
4. **Gate** (worker/flows/promotion.py): trained vs baseline vs active on the holdout, then
   the shadow check (worker/flows/shadow.py: the logged queries and the feedback pairs
   replayed on the challenger and the active model); every comparison recorded in the
   job result and with the models. The gate is decided once: a retry carries it out.

Every step records itself in the job's result, so the decision and the metrics are kept
whatever happens, and a retry (the worker was killed) skips what is already done: search
candidates and the training resume their run directories from the last finished epoch,
and a registered model is not trained or registered again. A promotion reindexes with the
chosen model under the reindex lock; publish then makes the new index and its model
active in one transaction. Until then the old model and index keep serving, and if that
reindex fails they simply stay.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

from core.db import Job, ModelVersion
from core.embedding import resolve_device
from core.jobs import update_progress
from core.registry import RegistryError, active_model, get_model, set_model_metrics
from core.runs import publish_run
from trainer.baseline import NoBaselineError, pretrained_baseline, register_pretrained_baseline
from trainer.config import ConfigError, TrainConfig
from trainer.data import DataContext
from trainer.register import NoHoldoutError, evaluate_version, register_trained
from trainer.retrain_config import retrain_config as resolve_retrain_config
from trainer.run_dir import RunPaths
from trainer.search import SearchSpace, load_search_space, planned_epochs, run_search
from trainer.train import train
from worker.flows.failures import FlowError
from worker.flows.jobstate import (
    BaselineStep,
    GateStep,
    ReindexStep,
    RetrainState,
    SearchStep,
    TrainedStep,
    save_state,
    touch_job,
)
from worker.flows.promotion import Contender, decide, with_shadow
from worker.flows.reindex import reindex_locked
from worker.flows.runner import run_job_flow
from worker.flows.shadow import shadow_evaluate
from worker.lock import holding, reindex_lock
from worker.runtime import Runtime

log = logging.getLogger(__name__)

PROMOTION_LOCK_WAIT_SECONDS = 3600.0
"""A promotion waits this long for a running reindex: the training it follows cost far more."""


class RetrainError(FlowError):
    pass


def retrain_config(rt: Runtime, config: dict[str, Any] | None, overrides: list[str]) -> TrainConfig:
    """The config to train with: the active model's plus ``config`` and ``overrides``
    (trainer/retrain_config.py, the function the API and the CLI validate with)."""
    try:
        return resolve_retrain_config(rt.sessions, rt.settings.device, config, overrides)
    except ConfigError as exc:
        raise RetrainError(f"invalid training config: {exc}") from exc


SEARCH_OFF = "off"


def search_space(rt: Runtime, search: str | None) -> SearchSpace | None:
    """The job's ``search`` (a YAML path, ``default`` or ``off``), else ``settings.retrain_search``."""
    choice = search if search is not None else rt.settings.retrain_search
    if not choice or choice == SEARCH_OFF:
        return None
    try:
        return load_search_space(choice)
    except ConfigError as exc:
        raise RetrainError(f"invalid recipe search space: {exc}") from exc


def holdout_metrics(rt: Runtime, version: str, cfg: TrainConfig) -> dict[str, Any]:
    """Leave-one-out metrics of ``version`` on ``cfg``'s fixed holdout of the current catalog."""
    try:
        return evaluate_version(rt.sessions, rt.settings, version, config=cfg,
                                device=resolve_device(rt.settings.device)).to_dict()
    except NoHoldoutError as exc:
        raise RetrainError(str(exc)) from exc


def run_retrain(rt: Runtime, job_id: int, config: dict[str, Any] | None = None,
                overrides: list[str] | None = None, reason: str = "requested",
                search: str | None = None) -> dict[str, Any]:
    """RETRAIN for ``job_id`` (worker.handlers creates one when beat sends none)."""
    overrides = list(overrides or [])

    def body(job: Job, _: None) -> dict[str, Any]:  # job.result: what earlier attempts finished
        return _retrain(rt, job_id, RetrainState.from_json(job.result), config, overrides, reason, search)

    return run_job_flow(rt.sessions, job_id, body)


def _registered(rt: Runtime, version: str) -> bool:
    try:
        get_model(rt.sessions, version)
    except RegistryError:
        return False
    return True


def _retrain(rt: Runtime, job_id: int, state: RetrainState, config: dict[str, Any] | None,
             overrides: list[str], reason: str, search: str | None) -> dict[str, Any]:
    settings, sessions = rt.settings, rt.sessions
    cfg = retrain_config(rt, config, overrides)
    space = search_space(rt, search)
    state.config = cfg.to_dict()  # what this attempt trains, for the user
    save_state(sessions, job_id, state)
    ctx = DataContext(settings, sessions)
    incumbent = active_model(sessions)
    candidate, baseline = f"m-retrain-{job_id}", f"m-retrain-{job_id}-pretrained"
    runs = settings.resolved_artifacts_dir / "runs"
    searched = planned_epochs(space, cfg) if space is not None else 0
    total = searched + cfg.epochs

    # ---- 1. which recipe: the search's winner, or the config as given
    if space is not None and state.search is None:
        update_progress(sessions, job_id, 0, total)
        try:
            found = run_search(cfg, space, runs / f"retrain-{job_id}-search", ctx,
                               on_epoch=lambda n, _planned: update_progress(sessions, job_id, n, total))
        except ValueError as exc:  # the catalog does not fit the space (too few classes, a bad candidate)
            raise RetrainError(f"recipe search could not run: {exc}") from exc
        state.search = SearchStep(found.to_dict(), found.recipe.to_dict())
        save_state(sessions, job_id, state)
    recipe = TrainConfig.from_dict(state.search.recipe) if state.search is not None else cfg

    # ---- 2. train it on every training class
    if state.trained is None:
        if not _registered(rt, candidate):  # a retry after registering skips the training
            run_dir = runs / f"retrain-{job_id}"
            update_progress(sessions, job_id, searched, total)
            try:
                trained = train(recipe, run_dir, ctx, resume=RunPaths(run_dir).state.exists(),
                                on_epoch_end=lambda record: update_progress(
                                    sessions, job_id, searched + int(record["epoch"])))
            except ValueError as exc:  # the catalog does not fit the config (ConfigError is one too)
                raise RetrainError(f"training could not start: {exc}") from exc
            publish_run(settings, run_dir)  # finished: to the store (if any), for every host to read
            register_trained(sessions, settings, trained, version=candidate, notes=f"retrain job {job_id} ({reason})")
            state.run_dir = str(run_dir)
            save_state(sessions, job_id, state)
        state.trained = TrainedStep(candidate, holdout_metrics(rt, candidate, cfg))
        state.feedback = feedback_used(rt, candidate, recipe)
        save_state(sessions, job_id, state)

    # ---- 3. the frozen pretrained baseline it has to beat
    if state.baseline is None:
        state.baseline = _baseline(rt, recipe, ctx, baseline, cfg, job_id)
        save_state(sessions, job_id, state)

    # ---- 4. the gate, decided once: a retry carries out a saved promotion, it never decides again
    if state.gate is None:
        state.gate = _gate(rt, state, cfg, recipe, incumbent, candidate, baseline)
        save_state(sessions, job_id, state)
    decision = state.gate.decision
    log.info("retrain job %d: %s -> %s", job_id, candidate, decision["reason"])
    if not decision["promote"]:
        return state.to_json()

    lock = reindex_lock(settings, owner=f"retrain-job-{job_id}")
    with holding(lock, wait_seconds=PROMOTION_LOCK_WAIT_SECONDS, on_beat=lambda: touch_job(sessions, job_id)) as held:
        reindexed = reindex_locked(rt, None, force=True, model_version=decision["chosen"],
                                   lock_lost=lambda: held.lost)
    state.gate.promoted, state.gate.promoted_version = True, decision["chosen"]
    state.reindex = ReindexStep(reindexed, reindexed.get("index_version"))
    save_state(sessions, job_id, state)
    return state.to_json()


def feedback_used(rt: Runtime, version: str, recipe: TrainConfig) -> dict[str, Any]:
    """The feedback the trained ``version`` saw: pair counts by judgement and source (the run's data
    summary, docs/ARCHITECTURE.md "Feedback in training") and the weights it was given."""
    summary = get_model(rt.sessions, version).metrics.get("holdout", {}).get("feedback")
    fb = recipe.feedback
    return {"enabled": bool(fb.enabled and summary is not None), **(summary or {"pairs": 0}),
            "weight": fb.weight, "source_weights": asdict(fb.sources)}


def _gate(rt: Runtime, state: RetrainState, cfg: TrainConfig, recipe: TrainConfig, incumbent: ModelVersion | None,
          candidate: str, baseline: str) -> GateStep:
    """Holdout comparison, then the shadow check of a challenger that would replace the active model;
    the decision is also recorded with the contenders (``metrics.promotion``, GET /api/v1/models)."""
    assert state.trained is not None and state.baseline is not None
    settings, sessions = rt.settings, rt.sessions
    active_metrics = None
    if incumbent is not None and incumbent.version not in (candidate, baseline):
        active_metrics = holdout_metrics(rt, incumbent.version, cfg)
    decision = decide(
        Contender(candidate, "trained", state.trained.metrics),
        Contender(incumbent.version, "active", active_metrics) if incumbent and active_metrics is not None else None,
        settings.promotion_margin,
        baseline=Contender(baseline, "pretrained", state.baseline.metrics) if state.baseline.version else None,
    )
    rule = settings.shadow
    if not decision.promote:
        decision = with_shadow(decision, rule, skipped="the holdout comparison already keeps the active model")
    elif incumbent is None or active_metrics is None or decision.chosen is None:
        decision = with_shadow(decision, rule, skipped="no active model to compare with")
    else:
        report = shadow_evaluate(rt, get_model(sessions, decision.chosen), incumbent, rule, recipe.feedback.sources)
        decision = with_shadow(decision, rule, report.to_dict())
    for version in (candidate, state.baseline.version):
        if version:
            set_model_metrics(sessions, version, {"promotion": decision.to_dict()})
    return GateStep(incumbent.version if incumbent else None, active_metrics, decision.to_dict())


def _baseline(rt: Runtime, recipe: TrainConfig, ctx: DataContext, version: str, holdout: TrainConfig,
              job_id: int) -> BaselineStep:
    """Build, register and score the frozen pretrained baseline; says why when there is none."""
    if not _registered(rt, version):
        try:
            model = pretrained_baseline(recipe, ctx, device=resolve_device(rt.settings.device))
        except NoBaselineError as exc:
            return BaselineStep(None, None, note=str(exc))
        register_pretrained_baseline(rt.sessions, rt.settings, model, recipe, version=version,
                                     notes=f"retrain job {job_id}: frozen pretrained baseline")
    return BaselineStep(version, holdout_metrics(rt, version, holdout))
