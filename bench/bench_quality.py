"""Retrieval quality: raw pixels / untrained / frozen ImageNet features vs trained embeddings.

Tables (P@1, R-Precision, MAP@R, leave-one-out, Musgrave et al. 2020):

1. Fashion-MNIST, held-out classes: train on classes 0-5 (train split), evaluate on
   the unseen classes 6-9 (t10k split, 4,000 images). Rows: raw pixels, the untrained
   small CNN, frozen ImageNet EfficientNet-Lite0 features (64 px), and the small CNN
   trained with triplet loss (batch-hard, semi-hard, batch-all) and contrastive loss
   (hard pairs).
2. clothing-small (real product photos, ../shared/data/clothing-small, dev only):
   train on train/, evaluate on test/ (372 photos, 10 categories). Rows: frozen
   ImageNet Lite0 trunk features (1280-d), the same trunk under a random 128-d head
   (what ``lookalike models init --pretrained`` registers), and trained rows picked
   with ``--clothing-rows`` (each is trainer/configs/clothing_lite0.yaml with a loss).
3. Evaluation at scale: 100,000 random 128-d embeddings (100 classes) leave-one-out,
   time and growth of the peak resident memory (Linux VmHWM), in a child process.

    PYTHONPATH=. python bench/bench_quality.py [--quick] [--threads 1]
        [--clothing-rows semi_hard,batch_hard,contrastive] [--skip-fashion] [--skip-scale]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from core.config import Settings
from core.embedding import Backbone, ModelSpec, Pretrained, build_model
from trainer.augment import normalize_batch
from trainer.config import TrainConfig
from trainer.data import DataContext, build_eval_data, build_training_data
from trainer.retrieval_metrics import RetrievalMetrics, retrieval_metrics
from trainer.train import train

REPO = Path(__file__).resolve().parents[1]
FM = Path("/usr/share/datasets/fashion-mnist")
CLOTHING = REPO.parent / "shared" / "data" / "clothing-small"
CLOTHING_CONFIG = REPO / "trainer" / "configs" / "clothing_lite0.yaml"
CPU = torch.device("cpu")
LOSSES = {
    "batch_hard": ["loss.kind=triplet", "loss.miner=batch_hard", "loss.margin=0.2"],
    "semi_hard": ["loss.kind=triplet", "loss.miner=semi_hard", "loss.margin=0.2"],
    "batch_all": ["loss.kind=triplet", "loss.miner=batch_all", "loss.margin=0.2"],
    "contrastive": ["loss.kind=contrastive", "loss.miner=hard_pairs", "loss.margin=0.5"],
}


def row(name: str, m: RetrievalMetrics, seconds: float | None = None, note: str = "") -> str:
    t = f"{seconds:.0f}" if seconds is not None else "-"
    return f"| {name} | {m.precision_at_1:.3f} | {m.r_precision:.3f} | {m.map_at_r:.3f} | {t} | {note} |"


def header(title: str) -> None:
    print(f"\n{title}\n\n| embedding | P@1 | R-Prec | MAP@R | train s | notes |\n|---|---|---|---|---|---|", flush=True)


def frozen_trunk_metrics(cfg: TrainConfig, input_size: int) -> RetrievalMetrics:
    """Leave-one-out metrics of :func:`frozen_trunk_embeddings`."""
    return retrieval_metrics(*frozen_trunk_embeddings(cfg, input_size))


def frozen_trunk_embeddings(cfg: TrainConfig, input_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pooled ImageNet Lite0 trunk features (no head), L2-normalised, on ``cfg``'s evaluation set, and labels."""
    spec = ModelSpec.for_backbone(Backbone.EFFICIENTNET_LITE0, pretrained=Pretrained.IMAGENET, input_size=input_size)
    trunk = build_model(spec).backbone.eval().to(memory_format=torch.channels_last)
    data = build_eval_data(cfg.data, spec, DataContext(Settings()))
    chunks = []
    with torch.inference_mode():
        for pixels, _ in DataLoader(data, batch_size=64):
            x = normalize_batch(pixels, spec, device=CPU, channels_last=True)
            chunks.append(torch.nn.functional.normalize(trunk(x), dim=1).numpy())
    return np.concatenate(chunks), np.asarray(data.labels)


def trained_metrics(cfg: TrainConfig) -> tuple[RetrievalMetrics, float, dict, str]:
    """Final holdout metrics, training seconds, the untrained (epoch 0) record, and a note on the curve."""
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = train(cfg, Path(tmp) / "run", DataContext(Settings()))
        seconds = time.perf_counter() - t0
    last = result.final_metrics
    m = RetrievalMetrics(last["precision_at_1"], last["r_precision"], last["map_at_r"])
    evaluated = [r for r in result.history if "map_at_r" in r and r["epoch"] > 0]
    best = max(evaluated, key=lambda r: r["map_at_r"])
    curve = "MAP@R by epoch " + " ".join(f"{r['map_at_r']:.2f}" for r in evaluated)
    note = f"{curve} (best {best['map_at_r']:.3f}, epoch {best['epoch']})"
    return m, seconds, result.history[0], note


def fashion_table(quick: bool) -> None:
    epochs, steps = (2, 20) if quick else (8, 50)
    base = ["data.source=idx", f"data.path={FM / 'train-images-idx3-ubyte.gz'}",
            f"data.eval_path={FM / 't10k-images-idx3-ubyte.gz'}", "data.holdout_classes=[6,7,8,9]",
            "data.augment=none", "model.input_size=28", "device=cpu", "progress=false", "classes_per_batch=6",
            "images_per_class=16", "optim.lr=3e-3", "optim.warmup_epochs=0.2", f"epochs={epochs}",
            f"steps_per_epoch={steps}", "seed=1", "eval_every=0"]
    if quick:
        base.append("data.eval_max_per_class=300")
    header(f"Fashion-MNIST, unseen classes 6-9 ({'1,200' if quick else '4,000'} t10k images); "
           f"small CNN {epochs} epochs x {steps} batches of 96")
    cfg = TrainConfig.from_yaml(None, base)
    data = build_training_data(cfg.data, cfg.model.spec(), DataContext(Settings()))
    pixels = np.stack([data.eval.images.load(i) for i in range(len(data.eval))]).reshape(len(data.eval), -1)
    pixels = pixels.astype(np.float32) / np.linalg.norm(pixels.astype(np.float32), axis=1, keepdims=True)
    print(row("raw pixels (784-d, unit norm)", retrieval_metrics(pixels, data.eval.labels)), flush=True)
    print(row("frozen ImageNet Lite0 trunk, 64 px (1280-d)", frozen_trunk_metrics(cfg, 64)), flush=True)
    untrained = None
    for name, loss in LOSSES.items():
        m, seconds, first, note = trained_metrics(cfg.with_overrides([*loss, "eval_every=1"]))
        if untrained is None:
            untrained = RetrievalMetrics(first["precision_at_1"], first["r_precision"], first["map_at_r"])
            print(row("untrained small CNN (128-d)", untrained), flush=True)
        print(row(f"trained: {name}", m, seconds, f"{' '.join(loss[1:])}; {note}"), flush=True)


def clothing_table(rows: list[str], quick: bool) -> None:
    if not CLOTHING.is_dir():
        print(f"\n(clothing-small not found at {CLOTHING}: table 2 skipped)")
        return
    cfg = TrainConfig.from_yaml(CLOTHING_CONFIG, ["progress=false", f"data.path={CLOTHING / 'train'}",
                                                  f"data.eval_path={CLOTHING / 'test'}", "device=cpu"])
    if quick:
        cfg = cfg.with_overrides(["epochs=1", "steps_per_epoch=5", "data.max_per_class=30"])
    header(f"clothing-small test split (372 photos, 10 categories), leave-one-out; "
           f"Lite0 224 px, {cfg.epochs} epochs")
    print(row("frozen ImageNet Lite0 trunk (1280-d)", frozen_trunk_metrics(cfg, 224)), flush=True)
    for name in rows:
        m, seconds, first, note = trained_metrics(cfg.with_overrides(LOSSES[name]))
        if name == rows[0]:
            untrained = RetrievalMetrics(first["precision_at_1"], first["r_precision"], first["map_at_r"])
            print(row("ImageNet trunk + random 128-d head (models init)", untrained), flush=True)
        print(row(f"trained: {name}", m, seconds, f"{' '.join(LOSSES[name][1:])}; {note}"), flush=True)


def scale_child(n: int, dim: int, classes: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, classes, size=n)
    centres = rng.normal(size=(classes, dim)).astype(np.float32)
    x = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 5000):  # small temporaries, so the peak before evaluating is x itself
        stop = min(start + 5000, n)
        x[start:stop] = centres[labels[start:stop]] + 1.5 * rng.standard_normal((stop - start, dim), dtype=np.float32)
    Path("/proc/self/clear_refs").write_text("5")  # Linux: reset the peak RSS (VmHWM) to the current RSS
    before = _status_kb("VmRSS")
    t0 = time.perf_counter()
    m = retrieval_metrics(x, labels)
    seconds = time.perf_counter() - t0
    grown = _status_kb("VmHWM") - before
    return {"seconds": seconds, "peak_growth_mb": grown / 1024, "map_at_r": m.map_at_r,
            "input_mb": x.nbytes / 2**20}


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def scale_table(quick: bool, threads: int) -> None:
    n = 20_000 if quick else 100_000
    code = ("import json,sys,torch; sys.path.insert(0, '.');"
            f"torch.set_num_threads({threads or torch.get_num_threads()});"
            "from bench.bench_quality import scale_child;"
            f"print(json.dumps(scale_child({n}, 128, 100)))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=REPO)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"\nLeave-one-out evaluation at scale: {n:,} x 128-d float32 ({r['input_mb']:.0f} MB), 100 classes\n")
    print("| embeddings | seconds | peak memory growth | MAP@R |\n|---|---|---|---|")
    print(f"| {n:,} | {r['seconds']:.1f} | {r['peak_growth_mb']:.0f} MB | {r['map_at_r']:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--clothing-rows", default="semi_hard",
                        help=f"comma-separated trained rows for table 2 among {list(LOSSES)}; empty: none")
    parser.add_argument("--skip-fashion", action="store_true")
    parser.add_argument("--skip-clothing", action="store_true")
    parser.add_argument("--skip-scale", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}")
    if not args.skip_fashion:
        fashion_table(args.quick)
    if not args.skip_clothing:
        rows = [r for r in args.clothing_rows.split(",") if r]
        unknown = set(rows) - set(LOSSES)
        if unknown:
            parser.error(f"unknown --clothing-rows {sorted(unknown)}")
        clothing_table(rows, args.quick)
    if not args.skip_scale:
        scale_table(args.quick, args.threads)


if __name__ == "__main__":
    main()
