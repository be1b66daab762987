"""Recipe ablation: our training loop vs a peer loop, one difference at a time, in one run.

The peer loop is what a pytorch-metric-learning user writes (the reference in issue 10):
torchvision preprocessing -- shorter side to 256 + centre crop 256, then
``RandomResizedCrop(224, scale=(0.5, 1.0))`` + horizontal flip; evaluation shorter side
224 + centre crop --, mean 0.5 / std 0.5, no colour jitter, PML's ``MPerClassSampler(m=K)``,
PML's ``TripletMarginLoss`` with its ``BatchHardMiner`` or semi-hard ``TripletMarginMiner``,
AdamW at constant rates, ``model.train()`` on the whole network (frozen blocks' BatchNorm
statistics keep updating). Same network (our EmbeddingNet, same frozen blocks and head),
same parameter groups and learning rates, same batch, margin and epochs.

Our rows are ``trainer.train`` with the config plus the row's overrides, so each row
changes one thing: the input geometry (``model.resize``), colour jitter
(``data.augment=crop_flip``), the schedule (``optim.schedule=constant``), BatchNorm
statistics of the frozen blocks, then all of them together. Every row is evaluated by
the same code (leave-one-out Recall@1 / R-Precision / MAP@R on the evaluation split).
The frozen trunk is also scored under each geometry.

    PYTHONPATH=. python bench/bench_recipe.py [--data clothing|fashion] [--miner batch_hard]
        [--rows peer,ours,center_crop,...] [--epochs 8] [--max-per-class 0] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners
from pytorch_metric_learning import samplers as pml_samplers
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from bench.bench_quality import CLOTHING, CLOTHING_CONFIG, FM, header, row, trained_metrics
from core.config import Settings
from core.embedding import ResizeMode, build_model
from trainer.augment import normalize_batch
from trainer.components import build_network, build_optimizer
from trainer.config import TrainConfig
from trainer.data import DataContext, build_eval_data, build_training_data
from trainer.data.images import ImageList
from trainer.retrieval_metrics import RetrievalMetrics, retrieval_metrics

CPU = torch.device("cpu")
MINERS = {
    "batch_hard": ["loss.kind=triplet", "loss.miner=batch_hard", "loss.margin=0.2"],
    "semi_hard": ["loss.kind=triplet", "loss.miner=semi_hard", "loss.margin=0.2"],
}
PEER_LIKE = ["model.resize=center_crop", "data.augment=crop_flip", "optim.schedule=constant",
             "optim.warmup_epochs=0"]
OURS_ROWS: dict[str, list[str]] = {
    "ours": [],
    "center_crop": ["model.resize=center_crop"],
    "pad": ["model.resize=pad"],
    "no_jitter": ["data.augment=crop_flip"],
    "constant_lr": ["optim.schedule=constant", "optim.warmup_epochs=0"],
    "peer_like": PEER_LIKE,
    "peer_like_pad": ["model.resize=pad", *PEER_LIKE[1:]],
    "memory": ["memory.size=1024", "memory.warmup_steps=100"],
}
ROW_NOTES = {
    "ours": "the config as shipped",
    "center_crop": "geometry: shorter side + centre crop",
    "pad": "geometry: pad to square on white",
    "no_jitter": "crops + flips, no colour jitter",
    "constant_lr": "constant lr, no warm-up",
    "peer_like": "centre crop + no jitter + constant lr",
    "peer_like_pad": "pad + no jitter + constant lr",
    "memory": "cross-batch memory of 1,024 from step 100",
}


def base_config(data: str, miner: str, epochs: int, max_per_class: int) -> TrainConfig:
    if data == "clothing":
        overrides = ["progress=false", f"data.path={CLOTHING / 'train'}", f"data.eval_path={CLOTHING / 'test'}"]
        cfg = TrainConfig.from_yaml(CLOTHING_CONFIG, overrides)
    else:
        cfg = TrainConfig.from_yaml(None, [
            "data.source=idx", f"data.path={FM / 'train-images-idx3-ubyte.gz'}",
            f"data.eval_path={FM / 't10k-images-idx3-ubyte.gz'}", "data.holdout_classes=[6,7,8,9]",
            "data.augment=none", "model.input_size=28", "classes_per_batch=6", "images_per_class=16",
            "optim.lr=3e-3", "optim.warmup_epochs=0.2", "steps_per_epoch=50", "progress=false"])
    extra = [*MINERS[miner], f"epochs={epochs}", "device=cpu", "seed=1", "eval_every=1"]
    if max_per_class:
        extra.append(f"data.max_per_class={max_per_class}")
    return cfg.with_overrides(extra)


# ---------------------------------------------------------------- the peer loop
class PeerPixels(torch.utils.data.Dataset):
    """Images decoded once at the peer's geometry (uint8), augmented per draw like torchvision would."""

    def __init__(self, images: ImageList, targets: np.ndarray, size: int, augment: v2.Transform | None):
        prepare = v2.Compose([v2.ToImage(), v2.Resize(size, antialias=True), v2.CenterCrop(size)])
        self.pixels = [prepare(_as_rgb(images.load(i))) for i in range(len(images))]
        self.targets = targets
        self.augment = augment

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.pixels[i]
        return (self.augment(x) if self.augment is not None else x), int(self.targets[i])


def _as_rgb(image):
    from PIL import Image
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    return image.convert("RGB")


def _peer_normalize(pixels: torch.Tensor) -> torch.Tensor:
    return (pixels.float() / 255.0 - 0.5) / 0.5  # the peer's mean 0.5 / std 0.5


def _embed(model: torch.nn.Module, data: PeerPixels) -> np.ndarray:
    model.eval()
    out = []
    with torch.inference_mode():
        for pixels, _ in DataLoader(data, batch_size=64):
            out.append(model(_peer_normalize(pixels).contiguous(memory_format=torch.channels_last)).numpy())
    return np.concatenate(out)


def peer_metrics(cfg: TrainConfig, miner: str) -> tuple[RetrievalMetrics, float, str]:
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    plain = cfg.with_overrides(["data.preload=false"])
    data = build_training_data(plain.data, plain.model.spec(), DataContext(Settings()))
    size = plain.model.spec().input_size
    big = round(size * 256 / 224)
    if plain.data.augment.value == "none":
        train_aug, train_size = None, size
    else:
        train_aug = v2.Compose([v2.RandomResizedCrop(size, scale=(0.5, 1.0), antialias=True),
                                v2.RandomHorizontalFlip()])
        train_size = big
    train_set = PeerPixels(data.train.images, data.train.targets, train_size, train_aug)
    eval_set = PeerPixels(data.eval.images, np.zeros(len(data.eval), dtype=np.int64), size, None)
    model = build_network(plain.model).to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, plain.optim)  # same groups and rates, held constant
    loss_fn = pml_losses.TripletMarginLoss(margin=plain.loss.margin)
    mine = (pml_miners.BatchHardMiner() if miner == "batch_hard"
            else pml_miners.TripletMarginMiner(margin=plain.loss.margin, type_of_triplets="semihard"))
    sampler = pml_samplers.MPerClassSampler(data.train.targets, m=plain.images_per_class,
                                            batch_size=plain.batch_size, length_before_new_iter=len(train_set))
    loader = DataLoader(train_set, batch_size=plain.batch_size, sampler=sampler, drop_last=True)
    steps = plain.steps_per_epoch or len(loader)
    curve = []
    t0 = time.perf_counter()
    for _epoch in range(plain.epochs):
        model.train()
        for step, (pixels, labels) in enumerate(loader):
            if step >= steps:
                break
            embeddings = model(_peer_normalize(pixels).contiguous(memory_format=torch.channels_last))
            loss = loss_fn(embeddings, labels, mine(embeddings, labels))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        curve.append(retrieval_metrics(_embed(model, eval_set), data.eval.labels))
    seconds = time.perf_counter() - t0
    best = max(range(len(curve)), key=lambda i: curve[i].map_at_r)
    note = ("MAP@R by epoch " + " ".join(f"{m.map_at_r:.2f}" for m in curve)
            + f" (best {curve[best].map_at_r:.3f}, epoch {best + 1})")
    return curve[-1], seconds, note


# ---------------------------------------------------------------- frozen trunk per geometry
def frozen_metrics(cfg: TrainConfig, resize: ResizeMode) -> RetrievalMetrics:
    spec = cfg.model.spec().replace(resize=resize)
    trunk = build_model(spec).backbone.eval().to(memory_format=torch.channels_last)
    data = build_eval_data(cfg.data, spec, DataContext(Settings()))
    chunks = []
    with torch.inference_mode():
        for pixels, _ in DataLoader(data, batch_size=64):
            x = normalize_batch(pixels, spec, device=CPU, channels_last=True)
            chunks.append(torch.nn.functional.normalize(trunk(x), dim=1).numpy())
    return retrieval_metrics(np.concatenate(chunks), data.labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", choices=["clothing", "fashion"], default="clothing")
    parser.add_argument("--miner", choices=list(MINERS), default="batch_hard")
    parser.add_argument("--rows", default="frozen,peer,ours,center_crop,no_jitter,constant_lr,peer_like")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--max-per-class", type=int, default=0, help="cap on training photos per class (0: all)")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.data == "clothing" and not CLOTHING.is_dir():
        parser.error(f"clothing-small not found at {CLOTHING}")
    cfg = base_config(args.data, args.miner, args.epochs, args.max_per_class)
    rows = [r for r in args.rows.split(",") if r]
    unknown = set(rows) - set(OURS_ROWS) - {"frozen", "peer"}
    if unknown:
        parser.error(f"unknown rows {sorted(unknown)}")
    print(f"torch threads: {torch.get_num_threads()}; {args.data}, {args.miner}, {cfg.epochs} epochs, "
          f"max_per_class={args.max_per_class or 'all'}")
    header(f"Recipe ablation on {args.data} ({args.miner}, margin {cfg.loss.margin}, "
           f"{cfg.classes_per_batch}x{cfg.images_per_class} batches, {cfg.epochs} epochs)")
    if "frozen" in rows and cfg.model.pretrained.value != "none":
        for resize in ResizeMode:
            print(row(f"frozen trunk features, {resize.value}", frozen_metrics(cfg, resize)), flush=True)
    for name in rows:
        if name == "frozen":
            continue
        if name == "peer":
            m, seconds, note = peer_metrics(cfg, args.miner)
            print(row("peer loop (PML + torchvision)", m, seconds, note), flush=True)
            continue
        m, seconds, _first, note = trained_metrics(cfg.with_overrides(OURS_ROWS[name]))
        print(row(f"{name}: {ROW_NOTES[name]}", m, seconds, f"{' '.join(OURS_ROWS[name])}; {note}"), flush=True)


if __name__ == "__main__":
    main()
