"""Near-duplicate detection: precision, recall per kind of copy, and time on Fashion-MNIST.

Catalog: the first ``--items`` Fashion-MNIST images (train then t10k split; 70,000 =
all of them), one photo per item, minus the images whose pixels repeat an earlier one
(the import merges byte-identical photos). Planted: ``--planted`` copies of randomly
chosen catalog images under new item ids, cycling through the kinds of
tests/fixtures/near_copies.py: a JPEG re-encode (quality 70), a resize (28 -> 40 px), a
1-px crop on every side and an off-centre ~5 % crop (2 px off the left and top, 1 px
off the right and bottom). Vectors come from the model (an untrained small CNN, and
with ``--checkpoint`` a trained one), the index from build_index (Annoy, euclidean,
LOOKALIKE_ANNOY_TREES), signatures from core.signatures.thumbnail, and the detection is
core.duplicates.detect (both candidate sources, the cutoff, the verification) and
group_pairs: find_duplicates minus the database and media reads.

Precision: share of the item pairs joined (verified) that are a planted (source, copy)
pair; recall: share of planted pairs whose items end up in one group; "candidates":
share of planted pairs among the verified candidates. With ``--sheet DIR`` the joined
pairs that were not planted are written as a PNG contact sheet per model, to look at.

    PYTHONPATH=. python bench/bench_duplicates.py --quick [--checkpoint PATH]
    PYTHONPATH=. python bench/bench_duplicates.py [--items 70000] [--min-similarity 0.99 ...] [--ratio R]
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
from core.duplicates import DuplicatePair, detect, group_pairs
from core.embedding import Embedder, ModelSpec, build_model
from core.index import Metric, VectorIndex, build_index
from core.signatures import thumbnail
from tests.fixtures.near_copies import CopyKind, near_copy

FM = Path("/usr/share/datasets/fashion-mnist")
KINDS = tuple(CopyKind)


def catalog(n_items: int, n_planted: int, seed: int) -> tuple[list[Image.Image], dict[int, int], list[CopyKind]]:
    """Images (catalog then copies), copy row -> source row, and each copy's kind."""
    train, _ = load_split(FM, Split.TRAIN)
    test, _ = load_split(FM, Split.TEST)
    pixels = np.concatenate([train, test])[:n_items]
    _, first = np.unique(pixels.reshape(len(pixels), -1), axis=0, return_index=True)
    images = [Image.fromarray(p, "L") for p in pixels[np.sort(first)]]
    sources = np.random.default_rng(seed).choice(len(images), size=n_planted, replace=False)
    copies, kinds = {}, []
    for j, src in enumerate(sources.tolist()):
        kinds.append(KINDS[j % len(KINDS)])
        copies[len(images)] = src
        images.append(near_copy(images[src], kinds[-1]))
    return images, copies, kinds


def contact_sheet(path: Path, images: list[Image.Image], pairs: list[DuplicatePair], limit: int = 60) -> None:
    """The first ``limit`` pairs side by side (ids are rows + 1), 3x scale, one pair per line."""
    pairs = pairs[:limit]
    sheet = Image.new("L", (2 * 90 + 10, max(len(pairs), 1) * 90), 128)
    for line, p in enumerate(pairs):
        for col, image_id in enumerate((p.image_a, p.image_b)):
            sheet.paste(images[image_id - 1].convert("L").resize((84, 84)), (col * 100, line * 90))
    sheet.save(path)


def run(name: str, embedder: Embedder, images: list[Image.Image], copies: dict[int, int], kinds: list[CopyKind],
        similarities: list[float], settings: Settings, sheet: Path | None) -> list[str]:
    """One table row per similarity bar; the embedding, index, signatures and detection are shared."""
    t0 = time.perf_counter()
    vectors = embedder.embed(images)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    t_embed = time.perf_counter() - t0
    t0 = time.perf_counter()
    thumbs = np.stack([thumbnail(im) for im in images])
    t_sign = time.perf_counter() - t0
    ids = np.arange(1, len(images) + 1, dtype=np.int64)  # image id = item id = row + 1
    item_of = {int(i): int(i) for i in ids}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        build_index(Path(tmp) / "i", ids, vectors, index_version="bench", model_version=name,
                    metric=Metric.EUCLIDEAN, n_trees=settings.annoy_trees)
        t_build = time.perf_counter() - t0
        t0 = time.perf_counter()
        with VectorIndex.load(Path(tmp) / "i") as index:
            found = detect(index, ids, item_of, thumbs, np.ones(len(ids), bool), ratio=settings.duplicate_ratio,
                           threshold=None, k=settings.duplicate_k, signature_k=settings.duplicate_k,
                           # searched up to the highest bar: exact at every lower one
                           min_similarity=max(similarities),
                           search_k=settings.duplicate_search_k)
        t_detect = time.perf_counter() - t0
    truth = {(s + 1, c + 1) for c, s in copies.items()}
    kind_of = np.array([k.value for k in kinds])
    candidate_pairs = {(p.image_a, p.image_b) for p in found.candidates}
    in_candidates = np.array([(s + 1, c + 1) in candidate_pairs for c, s in copies.items()])
    rows = []
    for bar in similarities:
        groups = group_pairs(found.candidates, item_of, {i: str(i) for i in item_of}, found.threshold,
                             None if bar <= -1 else bar)
        joined = {(p.image_a, p.image_b) for g in groups for p in g.pairs}
        group_of = {int(item): n for n, g in enumerate(groups) for item in g.items}
        hit = np.array([group_of.get(c + 1, -1) == group_of.get(s + 1, -2) for c, s in copies.items()])
        precision = len(joined & truth) / len(joined) if joined else float("nan")
        by_kind = " / ".join(f"{hit[kind_of == k.value].mean():.2f}" for k in KINDS)
        bar_text = "none (embedding only)" if bar <= -1 else f"{bar}"
        rows.append(f"| {name} | {len(images) - len(copies):,} + {len(copies)} | {bar_text} | "
                    f"{found.threshold:.4f} | {len(found.candidates):,} | {in_candidates.mean():.3f} | "
                    f"{precision:.3f} | {len(joined - truth)} | {hit.mean():.3f} | {by_kind} | "
                    f"{t_embed:.1f} | {t_build:.1f} | {t_sign:.1f} | {t_detect:.1f} |")
        if sheet is not None and bar > -1:
            extra = sorted((p for g in groups for p in g.pairs if (p.image_a, p.image_b) not in truth),
                           key=lambda p: -p.similarity)
            contact_sheet(sheet / f"{name.split()[0]}-{bar}.png", images, extra)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="3,000 items instead of --items")
    ap.add_argument("--items", type=int, default=70_000)
    ap.add_argument("--planted", type=int, default=400)
    ap.add_argument("--min-similarity", type=float, action="append",
                    help="verification bar(s); -1 = none; default: -1 and the setting")
    ap.add_argument("--checkpoint", type=Path, help="also a trained model checkpoint")
    ap.add_argument("--ratio", type=float, help="candidate cutoff: x the median (default: the setting)")
    ap.add_argument("--search-k", type=int, help="Annoy search_k of the index scan (default: the setting)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sheet", type=Path, help="write contact sheets of the unplanted joined pairs here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    settings = Settings()
    if args.ratio:
        settings = settings.replace(duplicate_ratio=args.ratio)
    if args.search_k:
        settings = settings.replace(duplicate_search_k=args.search_k)
    n_items = 3000 if args.quick else args.items
    images, copies, kinds = catalog(n_items, args.planted, seed=0)
    torch.manual_seed(0)
    models = {"untrained small CNN (32 px, 128-d)": Embedder(
        build_model(ModelSpec(input_size=32, embedding_dim=128)), device="cpu", batch_size=256)}
    if args.checkpoint:
        models[f"trained ({args.checkpoint.name})"] = Embedder.from_checkpoint(
            args.checkpoint, device="cpu", batch_size=256)
    if args.sheet:
        args.sheet.mkdir(parents=True, exist_ok=True)
    print(f"# {platform.node()}, {args.threads} torch threads, annoy trees {settings.annoy_trees}, "
          f"search_k {settings.duplicate_search_k}, k {settings.duplicate_k}, ratio {settings.duplicate_ratio}")
    print("| model | items + planted | min similarity | cutoff | candidates | planted in candidates | precision | "
          "unplanted joined | recall | recall " + " / ".join(k.value for k in KINDS) +
          " | embed s | index s | signatures s | detect s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    bars = args.min_similarity or [-1.0, settings.duplicate_min_similarity]
    for name, embedder in models.items():
        for line in run(name, embedder, images, copies, kinds, bars, settings, args.sheet):
            print(line, flush=True)


if __name__ == "__main__":
    main()
