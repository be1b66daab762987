"""The learning-rate schedules: warm-up + cosine, and warm-up + constant."""

from __future__ import annotations

import pytest
import torch

from trainer.components import build_scheduler
from trainer.config import LrSchedule, OptimConfig


def rates(schedule: LrSchedule, steps_per_epoch: int = 10, epochs: int = 3) -> list[float]:
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    cfg = OptimConfig(lr=1.0, schedule=schedule, warmup_epochs=0.5, min_lr_ratio=0.1)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch, epochs)
    out = []
    for _ in range(steps_per_epoch * epochs):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def test_constant_schedule_warms_up_then_holds() -> None:
    lr = rates(LrSchedule.CONSTANT)
    assert lr[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert lr[5:] == pytest.approx([1.0] * 25)


def test_cosine_schedule_warms_up_then_decays_to_the_floor() -> None:
    lr = rates(LrSchedule.COSINE)
    assert lr[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    after = lr[5:]
    assert all(a >= b for a, b in zip(after, after[1:]))
    assert after[-1] == pytest.approx(0.1, abs=0.01)
