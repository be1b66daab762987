"""Training throughput: our loss + miner vs pytorch-metric-learning's, same everything else.

One run, side by side (interleaved rounds, median step time, so noise from other
processes hits every row alike), EfficientNet-Lite0 at 224 px from its ImageNet
weights with the stem and first three blocks frozen, a 128-d head, batch 32
(8 classes x 4 images, drawn by our P x K sampler and augmented on the fly from
decoded-once photos), AdamW, gradient clipping. Each row is a whole training step
of a loop: next batch, normalise, forward, loss, backward, update.

- ``pml``: ``TripletMarginLoss(0.2)`` + ``TripletMarginMiner(0.2, "semihard")``;
- ``ours``: ``trainer.losses.TripletLoss(0.2)`` + ``trainer.miners.SemiHardMiner(0.2)``;
- ``ours, channels_last``: the same in the NHWC layout, as ``trainer.train`` runs;
- ``ours, train() epoch``: what ``trainer.train`` itself reports for one epoch of
  as many steps (not interleaved: indicative only).

The whole measurement runs in child processes with glibc's default malloc and with
``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=...``.

Images: ../shared/data/clothing-small/train (real photos) if present, else
Fashion-MNIST upscaled.

    PYTHONPATH=. python bench/bench_train.py [--quick] [--threads N] [--backbone small_cnn]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners

from core.config import Settings
from trainer.augment import normalize_batch
from trainer.batches import EpochBatches
from trainer.components import build_network, build_optimizer, keep_frozen_norms_in_eval
from trainer.config import TrainConfig
from trainer.data import DataContext, build_training_data
from trainer.losses import TripletLoss
from trainer.miners import SemiHardMiner
from trainer.train import train

REPO = Path(__file__).resolve().parents[1]
CLOTHING = REPO.parent / "shared" / "data" / "clothing-small" / "train"
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
TUNED_MALLOC = ["MALLOC_MMAP_MAX_=0", "MALLOC_TRIM_THRESHOLD_=68719476736"]
VARIANTS: dict[str, list[str]] = {
    "glibc default": ["env", "-u", "MALLOC_MMAP_MAX_", "-u", "MALLOC_TRIM_THRESHOLD_"],
    "mmap off, no trim": ["env", *TUNED_MALLOC],
}
LITE0_FROZEN = ["backbone.body._conv_stem", "backbone.body._bn0", "backbone.body._blocks.0",
                "backbone.body._blocks.1", "backbone.body._blocks.2"]


def bench_config(backbone: str, per_class: int) -> TrainConfig:
    lite = backbone == "efficientnet_lite0"
    source = (["data.source=folder", f"data.path={CLOTHING}", "data.holdout_fraction=0"] if CLOTHING.is_dir() else
              ["data.source=idx", f"data.path={FASHION_MNIST}", "data.holdout_fraction=0"])
    return TrainConfig.from_yaml(None, [
        *source, f"data.max_per_class={per_class}", "data.preload=true", "data.augment=product",
        f"model.backbone={backbone}", f"model.pretrained={'imagenet' if lite else 'none'}",
        f"model.freeze={LITE0_FROZEN if lite else []}", "optim.lr=1e-3", "optim.backbone_lr=1e-4",
        "classes_per_batch=8", "images_per_class=4", "device=cpu", "progress=false", "eval_every=0", "epochs=1",
    ])


def measure(args: argparse.Namespace) -> dict[str, float]:
    """Median images/s per row (runs inside one child process)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = bench_config(args.backbone, args.per_class)
    spec = cfg.model.spec()
    data = build_training_data(cfg.data, spec, DataContext(Settings()))
    base = build_network(cfg.model)
    cpu = torch.device("cpu")

    def stepper(loss_fn: Callable, channels_last: bool) -> Callable[[], None]:
        """One training step of a full loop: next P x K batch (augmented on the fly), forward, loss, update."""
        torch.manual_seed(0)
        model = copy.deepcopy(base)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        model.train()
        keep_frozen_norms_in_eval(model, cfg.model.freeze)
        optimizer = build_optimizer(model, cfg.optim)
        stream = _endless(EpochBatches(data, cfg))

        def step() -> None:
            pixels, labels = next(stream)
            x = normalize_batch(pixels, spec, device=cpu, channels_last=channels_last)
            loss = loss_fn(model(x), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            optimizer.step()
        return step

    pml_loss, pml_miner = pml_losses.TripletMarginLoss(margin=0.2), pml_miners.TripletMarginMiner(0.2, "semihard")
    ours = TripletLoss(0.2, miner=SemiHardMiner(0.2))
    rows: dict[str, Callable[[], None]] = {
        "pml": stepper(lambda e, y: pml_loss(e, y, pml_miner(e, y)), False),
        "ours": stepper(lambda e, y: ours(e, y).loss, False),
        "ours, channels_last (the default)": stepper(lambda e, y: ours(e, y).loss, True),
    }
    times: dict[str, list[float]] = {name: [] for name in rows}
    for step in rows.values():  # warm-up
        step()
    for _ in range(args.rounds):
        for name, step in rows.items():
            for _ in range(args.steps_per_round):
                t0 = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - t0)
    result = {name: cfg.batch_size / statistics.median(t) for name, t in times.items()}
    loop_cfg = cfg.with_overrides([f"steps_per_epoch={args.rounds * args.steps_per_round}"])
    with tempfile.TemporaryDirectory() as tmp:
        record = train(loop_cfg, Path(tmp) / "run", DataContext(Settings())).history[-1]
    result["ours, train() epoch (mean, not interleaved)"] = record["images_per_second"]
    return result


def _endless(batches: EpochBatches) -> Iterator[tuple[torch.Tensor, ...]]:
    epoch = 1
    while True:
        yield from batches.batches(epoch)
        epoch += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps-per-round", type=int, default=4)
    parser.add_argument("--per-class", type=int, default=40)
    parser.add_argument("--allocators", choices=["both", "tuned"], default="both")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.steps_per_round, args.per_class = 2, 2, 12
    if args.child:
        print(json.dumps(measure(args)))
        return
    child_args = [a for a in sys.argv[1:] if a != "--child"] + ["--child"]
    variants = VARIANTS if args.allocators == "both" else {"mmap off, no trim": VARIANTS["mmap off, no trim"]}
    results = {}
    for label, prefix in variants.items():
        out = subprocess.run([*prefix, sys.executable, __file__, *child_args], check=True, capture_output=True,
                             text=True, cwd=REPO)
        results[label] = json.loads(out.stdout.strip().splitlines()[-1])
    source = "clothing-small photos" if CLOTHING.is_dir() else "Fashion-MNIST (upscaled)"
    print(f"\nTraining throughput, {args.backbone}, batch 32 (8x4), {source}, "
          f"threads={args.threads or torch.get_num_threads()}; images/s (median step)\n")
    rows = list(next(iter(results.values())))
    print("| loop | " + " | ".join(results) + " | ratio to pml (" + list(results)[-1] + ") |")
    print("|---|" + "---|" * (len(results) + 1))
    last = list(results.values())[-1]
    for row in rows:
        cells = " | ".join(f"{results[v][row]:.1f}" for v in results)
        print(f"| {row} | {cells} | {last[row] / last['pml']:.2f}x |")


if __name__ == "__main__":
    main()
