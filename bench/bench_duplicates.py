"""Near-duplicate detection: precision, recall, calibrated threshold and time on Fashion-MNIST.

Catalog: the first ``--items`` Fashion-MNIST images (train then t10k split; 70,000 =
all of them), one photo per item. Planted: ``--planted`` copies of randomly chosen
catalog images under new item ids, cycling through a JPEG re-encode (quality 70), a
resize (28 -> 40 px) and a 1-px crop on every side. Vectors come from the model
(an untrained small CNN, and with ``--checkpoint`` a trained one), the index from
build_index (Annoy, euclidean, LOOKALIKE_ANNOY_TREES default; the scan at
LOOKALIKE_DUPLICATE_SEARCH_K or --search-k), and the detection is core.duplicates'
own scan, calibration and grouping (find_duplicates minus the database reads).

Precision: share of the item pairs joined below the threshold that are a planted
(source, copy) pair; recall: share of planted pairs whose items end up in one group.
Fashion-MNIST holds some natural near-duplicate images, which count against precision.

    PYTHONPATH=. python bench/bench_duplicates.py --quick [--checkpoint PATH]
    PYTHONPATH=. python bench/bench_duplicates.py [--items 70000]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from core.catalog.sample import Split, load_split
from core.config import Settings
from core.duplicates import calibrated_threshold, group_pairs, scan_neighbours
from core.embedding import Embedder, ModelSpec, build_model
from core.index import Metric, VectorIndex, build_index
from tests.fixtures.near_copies import CopyKind, near_copy

FM = Path("/usr/share/datasets/fashion-mnist")
KINDS = tuple(CopyKind)


def catalog(n_items: int, n_planted: int, seed: int) -> tuple[list[Image.Image], dict[int, int], list[CopyKind]]:
    """Images (catalog then copies), copy row -> source row, and each copy's kind."""
    train, _ = load_split(FM, Split.TRAIN)
    test, _ = load_split(FM, Split.TEST)
    pixels = np.concatenate([train, test])[:n_items]
    images = [Image.fromarray(p, "L") for p in pixels]
    sources = np.random.default_rng(seed).choice(n_items, size=n_planted, replace=False)
    copies, kinds = {}, []
    for j, src in enumerate(sources.tolist()):
        kinds.append(KINDS[j % len(KINDS)])
        copies[len(images)] = src
        images.append(near_copy(images[src], kinds[-1]))
    return images, copies, kinds


def run(name: str, embedder: Embedder, images: list[Image.Image], copies: dict[int, int], kinds: list[CopyKind],
        ratios: list[float], settings: Settings) -> list[str]:
    """One table row per ratio; the embedding, index and scan are shared by the ratios."""
    t0 = time.perf_counter()
    vectors = embedder.embed(images)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    t_embed = time.perf_counter() - t0
    ids = np.arange(1, len(images) + 1, dtype=np.int64)  # image id = item id = row + 1
    item_of = {int(i): int(i) for i in ids}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        build_index(Path(tmp) / "i", ids, vectors, index_version="bench", model_version=name,
                    metric=Metric.EUCLIDEAN, n_trees=settings.annoy_trees)
        t_build = time.perf_counter() - t0
        t0 = time.perf_counter()
        with VectorIndex.load(Path(tmp) / "i") as index:
            scan = scan_neighbours(index, ids, item_of, k=10, search_k=settings.duplicate_search_k)
        t_scan = time.perf_counter() - t0
    truth = {(s + 1, c + 1) for c, s in copies.items()}
    rows = []
    for ratio in ratios:
        t0 = time.perf_counter()
        threshold, median = calibrated_threshold(scan.nearest, ratio)
        groups = group_pairs(scan.pairs, item_of, {i: str(i) for i in item_of}, threshold)
        t_detect = t_scan + time.perf_counter() - t0
        joined = {(p.image_a, p.image_b) for g in groups for p in g.pairs}
        group_of = {int(item): n for n, g in enumerate(groups) for item in g.items}
        hit = np.array([group_of.get(c + 1, -1) == group_of.get(s + 1, -2) for c, s in copies.items()])
        precision = len(joined & truth) / len(joined) if joined else float("nan")
        by_kind = " / ".join(f"{hit[np.array([kind.value for kind in kinds]) == k.value].mean():.2f}" for k in KINDS)
        rows.append(f"| {name} | {len(images) - len(copies):,} + {len(copies)} | {ratio} | {threshold:.4f} "
                    f"(x {median:.4f}) | {precision:.3f} | {hit.mean():.3f} | {by_kind} | {len(groups)} | "
                    f"{t_embed:.1f} | {t_build:.1f} | {t_detect:.1f} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="3,000 items instead of --items")
    ap.add_argument("--items", type=int, default=70_000)
    ap.add_argument("--planted", type=int, default=300)
    ap.add_argument("--ratio", type=float, action="append", help="calibration ratio(s); default the setting")
    ap.add_argument("--checkpoint", type=Path, help="also a trained model checkpoint")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--search-k", type=int, help="Annoy search_k of the scan (default: the setting)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    settings = Settings()
    if args.search_k:
        settings = settings.replace(duplicate_search_k=args.search_k)
    n_items = 3000 if args.quick else args.items
    images, copies, kinds = catalog(n_items, args.planted, seed=0)
    torch.manual_seed(0)
    models = {"untrained small CNN (32 px, 128-d)": Embedder(
        build_model(ModelSpec(input_size=32, embedding_dim=128)), device="cpu", batch_size=256)}
    if args.checkpoint:
        models[f"trained ({args.checkpoint.parent.name}/{args.checkpoint.name})"] = Embedder.from_checkpoint(
            args.checkpoint, device="cpu", batch_size=256)
    print(f"# {platform.node()}, {args.threads} torch threads, annoy trees {settings.annoy_trees}, "
          f"search_k {settings.duplicate_search_k}, k=10")
    print("| model | items + planted | ratio | threshold (ratio x median) | precision | recall | "
          "recall jpeg / resize / crop | groups | embed s | index s | detect s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, embedder in models.items():
        for line in run(name, embedder, images, copies, kinds, args.ratio or [settings.duplicate_ratio], settings):
            print(line, flush=True)


if __name__ == "__main__":
    main()
