"""Registering trained (or untrained) models, and evaluating versions on a holdout.

The SQL side (versions, status, activation) is :mod:`core.registry`. This module
adds what needs training code: copying a run's checkpoint to where the registry
keeps checkpoints (``settings.models_dir / f"{version}.pt"``, which outlives the run
directory), registering a model that was never trained (so a catalog can be indexed
before any training), and scoring versions on one and the same holdout.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from sqlalchemy.orm import Session, sessionmaker

from core.atomic_files import replacing
from core.config import Settings
from core.embedding import Backbone, ModelSpec, Pretrained, build_model, load_model, save_checkpoint
from core.registry import checkpoint_path, get_model, new_version, register_model, share_checkpoint
from trainer.config import TrainConfig
from trainer.data import DataContext, build_eval_data
from trainer.evaluate import evaluate_holdout
from trainer.retrieval_metrics import DEFAULT_KS, RetrievalMetrics
from trainer.train import TrainResult


class NoHoldoutError(ValueError):
    """There is no evaluation data to score a model on; the message says what to pass."""


def model_checkpoint_path(settings: Settings, version: str) -> Path:
    return settings.models_dir / f"{version}.pt"


def register_trained(
    sessions: sessionmaker[Session], settings: Settings, result: TrainResult, *,
    version: str | None = None, notes: str = "",
) -> str:
    """Copy the run's checkpoint into the models directory and record it as a candidate."""
    version = version or new_version("m")
    destination = model_checkpoint_path(settings, version)
    _copy_atomically(result.checkpoint, destination)
    metrics = {**result.final_metrics, "holdout": result.summary, "run_dir": str(result.run_dir)}
    share_checkpoint(settings, version, destination)
    return register_model(
        sessions, checkpoint_path=destination, spec=result.spec.to_dict(), train_config=result.config.to_dict(),
        metrics=metrics, version=version, notes=notes or result.config.notes,
    )


def untrained_spec(
    backbone: Backbone | str, *, pretrained: bool, embedding_dim: int | None = None, input_size: int | None = None,
) -> ModelSpec:
    """The spec ``models init`` registers. With pretrained weights and no ``embedding_dim``,
    the embedding is the trunk's own pooled feature vector (e.g. 1280-d for Lite0)."""
    overrides: dict[str, Any] = {"pretrained": Pretrained.IMAGENET if pretrained else Pretrained.NONE}
    if input_size:
        overrides["input_size"] = input_size
    if embedding_dim is None:
        probe = ModelSpec.for_backbone(backbone, **overrides)
        embedding_dim = trunk_feature_dim(probe) if pretrained else probe.embedding_dim
    return ModelSpec.for_backbone(backbone, embedding_dim=embedding_dim, **overrides)


def trunk_feature_dim(spec: ModelSpec) -> int:
    return build_model(spec.replace(pretrained=Pretrained.NONE)).feature_dim


def register_untrained(
    sessions: sessionmaker[Session], settings: Settings, spec: ModelSpec, *,
    version: str | None = None, notes: str = "",
) -> str:
    """Register a network that was never trained here, so a catalog can be indexed at once.

    The head keeps the trunk's geometry as far as it can: the identity when the
    embedding is as wide as the trunk's features (the embedding *is* the frozen
    ImageNet feature vector), else a seeded random orthogonal projection. On
    clothing-small, a random 128-d head over Lite0 lost 0.07 MAP@R against the raw
    1280-d features (bench/bench_quality.py), hence the identity by default.
    """
    version = version or new_version("m")
    model = build_model(spec)
    linear = model.head[0]
    with torch.no_grad(), torch.random.fork_rng(devices=[]):  # seeded, without touching the caller's RNG
        torch.manual_seed(0)
        if linear.weight.shape[0] == linear.weight.shape[1]:
            linear.weight.copy_(torch.eye(linear.weight.shape[0]))
        else:
            torch.nn.init.orthogonal_(linear.weight)
        linear.bias.zero_()
    destination = model_checkpoint_path(settings, version)
    save_checkpoint(destination, model, extra={"untrained": True})
    kind = "random weights" if spec.pretrained is Pretrained.NONE else f"{spec.pretrained.value} features"
    share_checkpoint(settings, version, destination)
    return register_model(
        sessions, checkpoint_path=destination, spec=spec.to_dict(), train_config={},
        metrics={}, version=version, notes=notes or f"untrained {spec.backbone.value} ({kind})",
    )


def evaluate_version(
    sessions: sessionmaker[Session], settings: Settings, version: str, *,
    config: TrainConfig | None = None, device: torch.device | None = None, ks: tuple[int, ...] = DEFAULT_KS,
) -> RetrievalMetrics:
    """Leave-one-out holdout metrics of ``version`` on ``config``'s holdout (default: its own)."""
    record = get_model(sessions, version)
    cfg = config or _config_of(record.train_config, version)
    model, _ = load_model(checkpoint_path(settings, record.checkpoint_path, record.version))
    data = build_eval_data(cfg.data, model.spec, DataContext(settings, sessions))
    if data is None:
        raise NoHoldoutError(f"the config of {version} yields no holdout (no held-out classes and no data.eval_path)")
    device = device or torch.device("cpu")
    return evaluate_holdout(model.to(device), data, device=device, ks=ks, batch_size=cfg.eval_batch_size,
                            num_workers=cfg.data.num_workers)


@dataclass(frozen=True)
class Comparison:
    a: str
    b: str
    metrics: dict[str, dict[str, Any]]

    def delta(self, key: str = "map_at_r") -> float:
        """``b``'s score minus ``a``'s."""
        return float(self.metrics[self.b][key]) - float(self.metrics[self.a][key])


def compare_versions(
    sessions: sessionmaker[Session], settings: Settings, a: str, b: str, *,
    config: TrainConfig | None = None, device: torch.device | None = None,
) -> Comparison:
    """Score two versions on the same holdout: ``config``'s, else that of the first one trained."""
    if config is None:
        for version in (a, b):
            if get_model(sessions, version).train_config:
                config = _config_of(get_model(sessions, version).train_config, version)
                break
        else:
            raise NoHoldoutError(f"neither {a} nor {b} was trained here: give a config that names the holdout data")
    scores = {v: evaluate_version(sessions, settings, v, config=config, device=device).to_dict() for v in (a, b)}
    return Comparison(a, b, scores)


def _config_of(train_config: dict[str, Any], version: str) -> TrainConfig:
    if not train_config:
        raise NoHoldoutError(f"{version} was not trained here and has no holdout of its own: give a config")
    return TrainConfig.from_dict(train_config)


def _copy_atomically(source: Path, destination: Path) -> None:
    with replacing(destination, fsync=True) as tmp:
        shutil.copyfile(source, tmp)
