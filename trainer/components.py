"""The pieces the training loop is assembled from: network, loss, optimizer, schedule.

Each builder takes one config section, so the loop in :mod:`trainer.train` reads
as a list of decisions rather than a list of constructor arguments.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
from torch.optim import AdamW, Optimizer
from torch.optim.lr_scheduler import LambdaLR

from core.embedding import EmbeddingNet, build_model, load_model
from trainer.config import LossConfig, LossKind, LrSchedule, MemoryConfig, MinerKind, ModelConfig, OptimConfig
from trainer.losses import ContrastiveLoss, TripletLoss
from trainer.losses.memory import MemoryLoss, PairMask
from trainer.miners import BatchAllMiner, BatchHardMiner, HardPairMiner, SemiHardMiner, TripletMiner


def build_network(cfg: ModelConfig) -> EmbeddingNet:
    """A fresh (or ``init_checkpoint``-initialised) network with ``cfg.freeze`` applied."""
    spec = cfg.spec()
    if cfg.init_checkpoint:
        model, _ = load_model(Path(cfg.init_checkpoint), expected_spec=spec)
    else:
        model = build_model(spec)
    freeze(model, cfg.freeze)
    return model


def _matches(name: str, prefixes: list[str]) -> bool:
    # "a.b.1" must not match "a.b.10": compare whole dotted components.
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def freeze(model: nn.Module, prefixes: list[str]) -> list[str]:
    """Stop gradients for parameters under the dotted ``prefixes``; returns their names."""
    clean = [p.rstrip(".") for p in prefixes if p.strip(".")]
    frozen = [name for name, p in model.named_parameters() if _matches(name, clean)]
    unknown = [p for p in clean if not any(_matches(n, [p]) for n, _ in model.named_parameters())]
    if unknown:
        raise ValueError(f"model.freeze: no parameters under {unknown} (names look like "
                         f"{[n for n, _ in list(model.named_parameters())[:3]]})")
    for name, p in model.named_parameters():
        if name in frozen:
            p.requires_grad_(False)
    return frozen


def keep_frozen_norms_in_eval(model: nn.Module, prefixes: list[str]) -> None:
    """Frozen layers keep their BatchNorm statistics: call after every ``model.train()``."""
    clean = [p.rstrip(".") for p in prefixes if p.strip(".")]
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and _matches(name, clean):
            module.eval()


def build_loss(cfg: LossConfig) -> TripletLoss | ContrastiveLoss:
    """The configured loss with its miner; every option of ``LossConfig`` reaches one of them."""
    if cfg.kind is LossKind.CONTRASTIVE:
        pair_miner = None
        if cfg.miner is MinerKind.HARD_PAIRS:
            pair_miner = HardPairMiner(cfg.margin, pos_threshold=cfg.pos_threshold, strategy=cfg.pair_strategy)
        return ContrastiveLoss(cfg.margin, miner=pair_miner)
    miner: TripletMiner | None = None
    if cfg.miner is MinerKind.BATCH_ALL:
        miner = BatchAllMiner(cfg.margin, squared=cfg.squared, only_active=cfg.only_active)
    elif cfg.miner is MinerKind.BATCH_HARD:
        miner = BatchHardMiner(cfg.margin, squared=cfg.squared)
    elif cfg.miner is MinerKind.SEMI_HARD:
        miner = SemiHardMiner(cfg.margin, squared=cfg.squared, mode=cfg.semi_hard_mode)
    return TripletLoss(cfg.margin, squared=cfg.squared, soft_margin=cfg.soft_margin, miner=miner)


def with_memory(loss: TripletLoss | ContrastiveLoss, cfg: MemoryConfig, never_positive: PairMask | None = None,
                ) -> TripletLoss | ContrastiveLoss | MemoryLoss:
    """``loss`` scored against a cross-batch memory of ``cfg.size`` rows, or ``loss`` itself for size 0;
    ``never_positive`` masks the memory's columns too (trainer.feedback.NeverPositive.mask)."""
    return MemoryLoss(loss, cfg.size, cfg.warmup_steps, never_positive) if cfg.size else loss


def build_optimizer(model: EmbeddingNet, cfg: OptimConfig) -> AdamW:
    """AdamW with the head at ``lr`` and the trunk at ``backbone_lr``; no decay on biases and norms."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_head = name.startswith("head.")
        decays = p.ndim > 1  # weights decay; biases and norm scales/shifts do not
        groups.setdefault((is_head, decays), []).append(p)
    if not groups:
        raise ValueError("every parameter is frozen: nothing to train (check model.freeze)")
    backbone_lr = cfg.backbone_lr or cfg.lr
    return AdamW([
        {"params": params, "lr": cfg.lr if is_head else backbone_lr,
         "weight_decay": cfg.weight_decay if decays else 0.0}
        for (is_head, decays), params in sorted(groups.items())
    ])


class WarmupCosine:
    """Multiplier of the base lr at step ``s``: linear warm-up, then cosine down to ``floor``.

    ``constant=True`` stays at 1 after the warm-up (the peer loop's constant rates).
    """

    def __init__(self, warmup_steps: int, total_steps: int, floor: float, *, constant: bool = False):
        self.warmup_steps, self.total_steps, self.floor = warmup_steps, max(total_steps, 1), floor
        self.constant = constant

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.constant:
            return 1.0
        span = max(self.total_steps - self.warmup_steps, 1)
        progress = min((step - self.warmup_steps) / span, 1.0)
        return self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: Optimizer, cfg: OptimConfig, steps_per_epoch: int, epochs: int) -> LambdaLR:
    """Stepped once per batch."""
    total = steps_per_epoch * epochs
    warmup = min(round(cfg.warmup_epochs * steps_per_epoch), max(total - 1, 0))
    return LambdaLR(optimizer, WarmupCosine(warmup, total, cfg.min_lr_ratio,
                                            constant=cfg.schedule is LrSchedule.CONSTANT))


def amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """bfloat16 where the GPU has it (no loss scaling needed), else float16; None on CPU."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

