"""Small-CNN recipes on Fashion-MNIST's unseen classes 6-9, against raw pixels.

Two settings, the same four held-out classes (shirt, sneaker, bag, ankle boot):

- ``bench``: what bench/bench_quality.py's Fashion-MNIST table trains: the 36,000 train-split
  images of classes 0-5; evaluation on all 4,000 t10k images of classes 6-9.
- ``demo``: what ``make demo`` trains: the 6,000-image sample catalog (the balanced subset
  ``lookalike catalog sample`` imports: the first 600 train images of each class), trained
  on its 3,600 images of categories 0-5 and scored on the first 300 catalog images of each
  held-out category (1,200 images), as the retrain's promotion gate scores it.

Each run starts from the setting's *base* (the recipe that was the default before this
search: batch-hard / batch-all triplets, margin 0.2, AdamW 3e-3, 8 epochs, P=6 x K=16) and
applies the ``key=value`` overrides given, so a row of docs/BENCHMARKS.md is one command:

    PYTHONPATH=. python bench/bench_fashion_recipes.py --threads 1 --setting bench --seeds 1,2 \\
        --name "lr 1e-3" optim.lr=1e-3
    PYTHONPATH=. python bench/bench_fashion_recipes.py --threads 1 --setting demo --baselines

``--baselines`` prints raw pixels (784-d, unit norm) and the frozen ImageNet Lite0 trunk
(64 px) on the setting's evaluation images. Every run is appended as JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from core.catalog.sample import balanced_subset
from core.config import Settings
from trainer.config import TrainConfig
from trainer.data import DataContext, build_training_data
from trainer.data.idx import read_idx
from trainer.retrieval_metrics import RetrievalMetrics, retrieval_metrics
from trainer.train import train

FM = Path("/usr/share/datasets/fashion-mnist")
COMMON = ["data.holdout_classes=[6,7,8,9]", "data.augment=none", "model.input_size=28", "device=cpu",
          "progress=false", "classes_per_batch=6", "images_per_class=16", "optim.lr=3e-3",
          "optim.warmup_epochs=0.2", "epochs=8", "eval_every=1"]
BASES = {
    # bench/bench_quality.py's Fashion-MNIST table (its batch-hard row)
    "bench": [*COMMON, "data.source=idx", f"data.path={FM / 'train-images-idx3-ubyte.gz'}",
              f"data.eval_path={FM / 't10k-images-idx3-ubyte.gz'}", "model.embedding_dim=128",
              "loss.kind=triplet", "loss.miner=batch_hard", "loss.margin=0.2", "steps_per_epoch=50"],
    # cli/demo.py's DEMO_TRAIN_CONFIG before this search, at the demo's 8 epochs x <= 100 steps
    "demo": [*COMMON, "data.source=idx", "data.eval_max_per_class=300", "data.preload=true",
             "model.embedding_dim=64", "loss.kind=triplet", "loss.miner=batch_all", "loss.margin=0.2",
             "steps_per_epoch=100"],
}
DEMO_LIMIT = 6000


def demo_catalog_file(root: Path) -> Path:
    """The demo's sample catalog as an idx pair (images + labels) under ``root``."""
    images = read_idx(FM / "train-images-idx3-ubyte.gz")
    labels = read_idx(FM / "train-labels-idx1-ubyte.gz")
    chosen = balanced_subset(labels, DEMO_LIMIT)
    path = root / "demo-images-idx3-ubyte"
    with open(path, "wb") as fh:
        fh.write((0x803).to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in (len(chosen), 28, 28)))
        fh.write(np.ascontiguousarray(images[chosen]).tobytes())
    with open(root / "demo-labels-idx1-ubyte", "wb") as fh:
        fh.write((0x801).to_bytes(4, "big") + len(chosen).to_bytes(4, "big"))
        fh.write(np.ascontiguousarray(labels[chosen]).tobytes())
    return path


def base_config(setting: str, root: Path, overrides: list[str]) -> TrainConfig:
    extra = [f"data.path={demo_catalog_file(root)}"] if setting == "demo" else []
    return TrainConfig.from_yaml(None, [*BASES[setting], *extra, *overrides])


def pixel_metrics(cfg: TrainConfig) -> RetrievalMetrics:
    data = build_training_data(cfg.data, cfg.model.spec(), DataContext(Settings()))
    assert data.eval is not None
    pixels = np.stack([np.asarray(data.eval.images.load(i), dtype=np.float32).reshape(-1)
                       for i in range(len(data.eval))])
    pixels /= np.linalg.norm(pixels, axis=1, keepdims=True)
    return retrieval_metrics(pixels, data.eval.labels)


def run(cfg: TrainConfig) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = train(cfg, Path(tmp) / "run", DataContext(Settings()))
        seconds = time.perf_counter() - t0
    evaluated = [r for r in result.history if "map_at_r" in r and r["epoch"] > 0]
    last = evaluated[-1]
    best = max(evaluated, key=lambda r: r["map_at_r"])
    return {"p1": last["precision_at_1"], "rprec": last["r_precision"], "map_at_r": last["map_at_r"],
            "best_map_at_r": best["map_at_r"], "best_epoch": best["epoch"], "seconds": seconds,
            "curve": [round(r["map_at_r"], 3) for r in evaluated], "steps": evaluated[-1].get("steps")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("overrides", nargs="*", help="key=value on top of the setting's base")
    parser.add_argument("--setting", choices=sorted(BASES), default="bench")
    parser.add_argument("--seeds", default="1", help="comma-separated seeds")
    parser.add_argument("--name", default="", help="row name (default: the overrides)")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--baselines", action="store_true", help="raw pixels and the frozen Lite0 trunk, no training")
    parser.add_argument("--out", type=Path, default=Path("var/bench/fashion_recipes.jsonl"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    name = args.name or " ".join(args.overrides) or "base"
    with tempfile.TemporaryDirectory() as root:
        if args.baselines:
            from bench.bench_quality import frozen_trunk_metrics  # ImageNet weights: only when asked

            cfg = base_config(args.setting, Path(root), args.overrides)
            for label, m in (("raw pixels (784-d, unit norm)", pixel_metrics(cfg)),
                             ("frozen ImageNet Lite0 trunk, 64 px", frozen_trunk_metrics(cfg, 64))):
                print(f"| {args.setting} | {label} | {m.precision_at_1:.3f} | {m.r_precision:.3f} | "
                      f"{m.map_at_r:.3f} |", flush=True)
            return
        finals = []
        for seed in [int(s) for s in args.seeds.split(",")]:
            cfg = base_config(args.setting, Path(root), [*args.overrides, f"seed={seed}"])
            r = run(cfg)
            finals.append(r["map_at_r"])
            record = {"setting": args.setting, "name": name, "overrides": args.overrides, "seed": seed, **r}
            with open(args.out, "a") as fh:
                fh.write(json.dumps(record) + "\n")
            curve = " ".join(f"{v:.2f}".lstrip("0") for v in r["curve"])
            print(f"| {args.setting} | {name} | {seed} | {r['p1']:.3f} | {r['rprec']:.3f} | {r['map_at_r']:.3f} | "
                  f"{r['best_map_at_r']:.3f} (ep {r['best_epoch']}) | {r['seconds']:.0f} | {curve} |", flush=True)
        if len(finals) > 1:
            print(f"| {args.setting} | {name} | mean | | | {np.mean(finals):.3f} ± {np.std(finals):.3f} | | | |",
                  flush=True)


if __name__ == "__main__":
    main()
