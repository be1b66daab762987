"""train(until_epoch=...): stop early on the whole run's schedule, continue later as if never stopped."""

from __future__ import annotations

from pathlib import Path

import torch

from core.config import Settings
from core.embedding import load_model
from tests.trainer.test_train import fmnist_config
from trainer.data import DataContext
from trainer.run_dir import load_state
from trainer.train import train


def test_rungs_continue_exactly_like_one_run(tmp_path: Path, fashion_mnist_dir: Path) -> None:
    torch.set_num_threads(1)
    cfg = fmnist_config(fashion_mnist_dir, "epochs=3", "steps_per_epoch=3", "classes_per_batch=3",
                        "images_per_class=4", "data.max_per_class=40", "data.eval_max_per_class=10", "seed=3")
    ctx = DataContext(Settings())
    whole = train(cfg, tmp_path / "whole", ctx)

    first = train(cfg, tmp_path / "rungs", ctx, until_epoch=1)
    assert [r["epoch"] for r in first.history] == [0, 1] and "map_at_r" in first.history[-1]
    assert load_state(tmp_path / "rungs" / "train_state.pt")["epoch"] == 1
    again = train(cfg, tmp_path / "rungs", ctx, resume=True, until_epoch=1)  # nothing left to do
    assert again.history == first.history
    train(cfg, tmp_path / "rungs", ctx, resume=True, until_epoch=2)
    done = train(cfg, tmp_path / "rungs", ctx, resume=True)

    assert [r["loss"] for r in done.history[1:]] == [r["loss"] for r in whole.history[1:]]
    a, _ = load_model(whole.checkpoint)
    b, _ = load_model(done.checkpoint)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name
