"""The training loop, top to bottom.

``train(cfg, run_dir, ctx)`` builds the data, the network, the loss, AdamW and a
warm-up + cosine schedule; then, per epoch: re-seed, train (gradient clipping, AMP on
CUDA, channels_last, optional ``torch.compile``), evaluate on the holdout, and save
the checkpoint, the resumable state and the metrics log. At the end it draws the plots
and writes the report. ``resume=True`` continues a run directory exactly where its
last finished epoch left it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from core.embedding import EmbeddingNet, ModelSpec, resolve_device, save_checkpoint
from trainer.batches import EpochBatches, batch_loss
from trainer.components import (
    amp_dtype,
    build_loss,
    build_network,
    build_optimizer,
    build_scheduler,
    keep_frozen_norms_in_eval,
    with_memory,
)
from trainer.config import ConfigError, TrainConfig
from trainer.data import DataContext, TrainingData, build_training_data
from trainer.evaluate import evaluate_holdout
from trainer.feedback import FeedbackTerm, PositionedImages, never_positive
from trainer.losses.memory import MemoryLoss
from trainer.plots import write_plots
from trainer.run_dir import RunPaths, load_state, save_state, seed_everything
from trainer.runlog import render_report, write_atomic, write_jsonl

log = logging.getLogger(__name__)
# Keys that may differ between a run and its resumption without changing what is computed.
RESUME_FREE_KEYS = frozenset({"progress", "notes"})
# Keys of an epoch record that describe training; the rest are holdout metrics.
_TRAIN_KEYS = frozenset({"epoch", "loss", "active_fraction", "violating_fraction", "selected_fraction", "lr",
                         "images_per_second", "seconds", "steps", "feedback_loss"})
# Per-step mining statistics (trainer.losses.base.LossOutput), averaged into each epoch record.
_STEP_FRACTIONS = ("active_fraction", "violating_fraction", "selected_fraction")


@dataclass
class TrainResult:
    run_dir: Path
    checkpoint: Path
    spec: ModelSpec
    config: TrainConfig
    history: list[dict[str, Any]]
    summary: dict[str, Any]

    @property
    def final_metrics(self) -> dict[str, Any]:
        """The holdout metrics of the last evaluated epoch (empty if none was evaluated)."""
        evaluated = [r for r in self.history if "map_at_r" in r]
        return {k: v for k, v in evaluated[-1].items() if k not in _TRAIN_KEYS} if evaluated else {}


def train(
    cfg: TrainConfig,
    run_dir: Path,
    ctx: DataContext,
    *,
    resume: bool = False,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
    until_epoch: int | None = None,
) -> TrainResult:
    """Train per ``cfg`` into ``run_dir``; ``on_epoch_end`` sees each epoch's record once it is saved.

    ``until_epoch`` stops after that epoch with the schedule of the whole ``cfg.epochs``, so a
    later ``resume=True`` call continues exactly as one uninterrupted run would (the recipe
    search's successive halving trains its candidates rung by rung this way).
    """
    paths = RunPaths(Path(run_dir))
    state = _resumable_state(paths, cfg) if resume else None
    if not resume and paths.state.exists():
        raise ConfigError(f"{paths.root} already holds a training run; resume it or choose another directory")
    paths.root.mkdir(parents=True, exist_ok=True)
    cfg.save_yaml(paths.config)
    started = time.perf_counter()

    # ---- what to train, on what
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    spec = cfg.model.spec()
    data = build_training_data(cfg.data, spec, ctx, cfg.feedback)
    model = build_network(cfg.model).to(device)
    channels_last = cfg.channels_last  # faster on CPU too: 1.4x for Lite0 training (bench/bench_train.py)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    never = never_positive(data)  # feedback: same-class items marked dissimilar are never positives
    loss_fn = with_memory(build_loss(cfg.loss), cfg.memory, never.mask if never is not None else None)
    feedback = FeedbackTerm.build(data, cfg.feedback, cfg.seed)  # feedback: the pair term of each step
    batches = EpochBatches(data, cfg, pin_memory=device.type == "cuda",
                           dataset=PositionedImages(data.train) if never is not None else None)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, len(batches), cfg.epochs)
    autocast = amp_dtype(device, cfg.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=autocast is torch.float16)
    forward = torch.compile(model) if cfg.compile else model
    log.info("training %s on %s: %s; %d steps/epoch", spec.backbone.value, device, data.summary, len(batches))

    # ---- where we start
    history: list[dict[str, Any]] = []
    step_log: list[dict[str, Any]] = []
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        history = list(state["history"])
        step_log = list(state.get("steps", []))
    start_epoch = int(state["epoch"]) if state is not None else 0
    if isinstance(loss_fn, MemoryLoss):  # the queue is not saved: it refills; the warm-up is not repeated
        loss_fn.step = start_epoch * len(batches)
    if not history and data.eval is not None and cfg.eval_every:
        history.append({"epoch": 0, **_evaluate(model, data, cfg, device)})
        write_jsonl(paths.metrics, history)

    # ---- the epochs
    embed = {"spec": spec, "device": device, "channels_last": channels_last, "autocast_dtype": autocast}
    last_epoch = cfg.epochs if until_epoch is None else max(1, min(until_epoch, cfg.epochs))
    for epoch in range(start_epoch + 1, last_epoch + 1):
        seed_everything(cfg.seed, epoch)
        model.train()
        keep_frozen_norms_in_eval(model, cfg.model.freeze)
        totals = {"loss": 0.0, "images": 0, "steps": 0, "feedback_loss": 0.0, **dict.fromkeys(_STEP_FRACTIONS, 0.0)}
        if feedback is not None:
            feedback.start_epoch(epoch)
        t0 = time.perf_counter()
        bar = tqdm(batches.batches(epoch), total=len(batches), desc=f"epoch {epoch}/{cfg.epochs}",
                   disable=not cfg.progress, leave=False)
        for batch in bar:
            out, n_images = batch_loss(forward, loss_fn, batch, data.source, **embed,
                                       not_positive=never.mask(batch[2]) if never is not None else None,
                                       positions=batch[2] if never is not None else None)
            loss, extra = out.loss, dict[str, float]()
            if feedback is not None:
                pair_out, pair_images = feedback.step_loss(forward, **embed)
                loss = loss + cfg.feedback.weight * pair_out.loss
                n_images += pair_images
                extra["feedback_loss"] = float(pair_out.loss.detach())
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.optim.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            loss_value = float(loss.detach())
            step = {"epoch": epoch, "step": len(step_log) + 1, "loss": loss_value, "candidates": out.candidates,
                    **{k: getattr(out, k) for k in _STEP_FRACTIONS}, **extra}
            step_log.append(step)
            for key in ("loss", *_STEP_FRACTIONS, *extra):
                totals[key] += step[key]
            totals["images"] += n_images
            totals["steps"] += 1
            bar.set_postfix(loss=f"{loss_value:.4f}", active=f"{out.active_fraction:.2f}")
        seconds = time.perf_counter() - t0
        steps = max(totals["steps"], 1)
        record: dict[str, Any] = {
            "epoch": epoch, "loss": totals["loss"] / steps, **{k: totals[k] / steps for k in _STEP_FRACTIONS},
            "lr": scheduler.get_last_lr()[0], "steps": totals["steps"], "seconds": seconds,
            "images_per_second": totals["images"] / seconds if seconds > 0 else None,
            **({"feedback_loss": totals["feedback_loss"] / steps} if feedback is not None else {}),
        }
        if data.eval is not None and cfg.eval_every and (epoch % cfg.eval_every == 0 or epoch == last_epoch):
            record.update(_evaluate(model, data, cfg, device))
        history.append(record)
        log.info("epoch %d: %s", epoch, {k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()})

        # ---- save: checkpoint, then the state that makes it resumable, then the log
        save_checkpoint(paths.checkpoint, model, metrics=_metrics_of(record),
                        extra={"epoch": epoch, "train_config": cfg.to_dict(), "data": data.summary})
        save_state(paths.state, {
            "epoch": epoch, "config": cfg.to_dict(), "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "history": history, "steps": step_log,
        })
        write_jsonl(paths.metrics, history)
        write_jsonl(paths.steps, step_log)
        if on_epoch_end is not None:
            on_epoch_end(record)

    # ---- the end: plots and report
    write_plots(paths.root, history, step_log)
    write_atomic(paths.report, render_report(
        name=paths.root.name, config=cfg.to_dict(), summary=data.summary, history=history,
        seconds=time.perf_counter() - started, device=str(device),
    ))
    return TrainResult(paths.root, paths.checkpoint, spec, cfg, history, data.summary)


def _evaluate(model: EmbeddingNet, data: TrainingData, cfg: TrainConfig, device: torch.device) -> dict[str, Any]:
    """Holdout metrics, embedded as the service embeds: float32, its memory layout (see trainer.evaluate)."""
    assert data.eval is not None
    metrics = evaluate_holdout(model, data.eval, device=device, ks=cfg.ks, batch_size=cfg.eval_batch_size,
                               num_workers=cfg.data.num_workers)
    return metrics.to_dict()


def _metrics_of(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in _TRAIN_KEYS}


def _resumable_state(paths: RunPaths, cfg: TrainConfig) -> dict[str, Any] | None:
    """The saved state of ``paths`` if it matches ``cfg`` (None when nothing was saved yet)."""
    if not paths.state.exists():
        return None
    state = load_state(paths.state)
    # Through the dataclasses, so a section added since (saved without it) reads as its defaults.
    saved, wanted = TrainConfig.from_dict(state["config"]).to_dict(), cfg.to_dict()
    differing = sorted(k for k in set(saved) | set(wanted)
                       if k not in RESUME_FREE_KEYS and saved.get(k) != wanted.get(k))
    if differing:
        raise ConfigError(
            f"cannot resume {paths.root}: the config differs in {differing}; resuming must repeat the "
            "original config (it is saved in config.yaml there)"
        )
    return state
