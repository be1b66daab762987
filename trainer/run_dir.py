"""A training run's directory, its resumable state, and per-epoch seeding.

Layout of a run directory::

    config.yaml      the resolved TrainConfig
    checkpoint.pt    the model after the last finished epoch (core.embedding checkpoint)
    train_state.pt   what resuming needs: weights, optimizer, schedule, scaler, epoch, history
    metrics.jsonl    one JSON record per epoch
    *.png, report.txt  written at the end

Every random stream is re-seeded from ``(seed, epoch)`` at the start of each epoch
(the P x K sampler and the tuple shuffler take the epoch too), so an epoch's batches,
augmentations and worker seeds depend only on the seed and the epoch number. Resuming
after epoch ``e`` therefore replays exactly what an uninterrupted run would have done.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.atomic_files import replacing

STATE_FORMAT = "lookalike.train_state"
STATE_VERSION = 1


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint.pt"

    @property
    def state(self) -> Path:
        return self.root / "train_state.pt"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def steps(self) -> Path:
        """One record per training step: loss and the mining statistics (``trainer.train``)."""
        return self.root / "steps.jsonl"

    @property
    def report(self) -> Path:
        return self.root / "report.txt"


def epoch_seed(seed: int, epoch: int) -> int:
    """A distinct 63-bit seed per (run seed, epoch)."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(2, dtype=np.uint32).view(np.uint64)[0] >> 1)


def seed_everything(seed: int, epoch: int = 0) -> int:
    value = epoch_seed(seed, epoch)
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)
    return value


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Write the resumable state atomically (temp file + fsync + rename)."""
    payload = {"format": STATE_FORMAT, "version": STATE_VERSION, **state}
    with replacing(path, fsync=True) as tmp:
        torch.save(payload, tmp)


def load_state(path: Path) -> dict[str, Any]:
    try:
        # Plain data only (tensors, dicts, numbers): never unpickle code from a run directory.
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"cannot read training state {path}: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != STATE_FORMAT:
        raise ValueError(f"{path} is not a Lookalike training state file")
    if payload.get("version") != STATE_VERSION:
        raise ValueError(f"{path} has state version {payload.get('version')!r}; this code reads {STATE_VERSION}")
    return payload
