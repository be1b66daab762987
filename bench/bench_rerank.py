"""Query-time re-ranking: alpha query expansion (aQE) and database-side augmentation (DBA), measured.

Quality (core/rerank.py on cached embeddings; metrics of trainer/retrieval_metrics.py):

- clothing-small test split (372 photos), the model of ``trainer/configs/clothing_lite0.yaml``
  trained once by ``trainer.train`` (one thread, ~25 min) and frozen ImageNet Lite0 trunk
  features (1280-d); skipped when ../shared/data/clothing-small is absent;
- Fashion-MNIST unseen classes 6-9 (4,000 t10k images), the small CNN of
  ``trainer/configs/fashion_mnist_small_cnn.yaml`` trained once, and raw pixels.

Protocol: DBA must not see the queries (in serving, a query photo is not in the catalog), so
leave-one-out is replaced by 5 folds: each fold queries the other four (the "catalog", DBA
applied within it only); metrics are pooled over all queries. A leave-one-out row ties the
embeddings to docs/BENCHMARKS.md. Grid: n in {1,2,3,5}, alpha in {0,1,3}; "both" uses the
same n and alpha for DBA and aQE. Exact neighbours (core.index.exact_search) throughout.

Cost: aQE needs a second ANN query. Annoy (the project's trees and search_k) on 1,000,000
synthetic clustered 128-d unit vectors, as bench/bench_api.py builds them: one query vs
query + fetch n result vectors + expand + query again, ms per query.

    PYTHONPATH=. python bench/bench_rerank.py [--cache /tmp/lookalike-rerank-cache] [--threads 1]
        [--skip-clothing] [--skip-fashion] [--skip-cost] [--cost-size 1000000]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.bench_quality import CLOTHING, CLOTHING_CONFIG, FM, frozen_trunk_embeddings
from core.config import RerankMode, Settings
from core.embedding import load_model
from core.rerank import Rerank, expand_query
from trainer.config import TrainConfig
from trainer.data import DataContext, build_training_data
from trainer.evaluate import embed_dataset
from trainer.retrieval_metrics import RetrievalMetrics, retrieval_metrics
from trainer.train import train

REPO = Path(__file__).resolve().parents[1]
FASHION_CONFIG = REPO / "trainer" / "configs" / "fashion_mnist_small_cnn.yaml"
CPU = torch.device("cpu")
FOLDS = 5
NEIGHBOURS = (1, 2, 3, 5)
ALPHAS = (0.0, 1.0, 3.0)
MODE_NAMES = {RerankMode.NONE: "none", RerankMode.QUERY_EXPANSION: "aQE", RerankMode.DATABASE_AUGMENTATION: "DBA",
              RerankMode.BOTH: "DBA + aQE"}


@dataclass(frozen=True)
class EmbeddingSet:
    name: str
    vectors: np.ndarray  # [N, d], unit rows
    labels: np.ndarray


# ----------------------------------------------------------------------------- embeddings (cached)
def cached(path: Path, make: Callable[[], tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """(vectors, labels) from ``path`` (.npz), computed by ``make`` the first time."""
    if not path.exists():
        vectors, labels = make()
        np.savez(path, vectors=np.asarray(vectors, dtype=np.float32), labels=np.asarray(labels))
    with np.load(path) as z:
        return z["vectors"], z["labels"]


def trained_embeddings(cfg: TrainConfig, run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Train ``cfg`` into ``run_dir`` once (resuming an interrupted run), embed its evaluation set."""
    if not (run_dir / "report.txt").exists():  # written last by trainer.train
        train(cfg, run_dir, DataContext(Settings()), resume=(run_dir / "train_state.pt").exists())
    model, _ = load_model(run_dir / "checkpoint.pt")
    data = build_training_data(cfg.data, cfg.model.spec(), DataContext(Settings()))
    return embed_dataset(model, data.eval, device=CPU, batch_size=64), np.asarray(data.eval.labels)


def clothing_sets(cache: Path) -> list[EmbeddingSet]:
    cfg = TrainConfig.from_yaml(CLOTHING_CONFIG, ["progress=false", f"data.path={CLOTHING / 'train'}",
                                                  f"data.eval_path={CLOTHING / 'test'}", "device=cpu"])
    trained = cached(cache / "clothing_trained.npz", lambda: trained_embeddings(cfg, cache / "clothing_run"))
    frozen = cached(cache / "clothing_frozen.npz", lambda: frozen_trunk_embeddings(cfg, 224))
    return [EmbeddingSet("clothing, trained (clothing_lite0.yaml)", *trained),
            EmbeddingSet("clothing, frozen Lite0 trunk", *frozen)]


def fashion_sets(cache: Path) -> list[EmbeddingSet]:
    cfg = TrainConfig.from_yaml(FASHION_CONFIG, ["progress=false", "device=cpu",
                                                 f"data.path={FM / 'train-images-idx3-ubyte.gz'}",
                                                 f"data.eval_path={FM / 't10k-images-idx3-ubyte.gz'}"])

    def pixels() -> tuple[np.ndarray, np.ndarray]:
        data = build_training_data(cfg.data, cfg.model.spec(), DataContext(Settings()))
        x = np.stack([data.eval.images.load(i) for i in range(len(data.eval))]).reshape(len(data.eval), -1)
        x = x.astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True), np.asarray(data.eval.labels)

    trained = cached(cache / "fashion_trained.npz", lambda: trained_embeddings(cfg, cache / "fashion_run"))
    raw = cached(cache / "fashion_pixels.npz", pixels)
    return [EmbeddingSet("Fashion-MNIST 6-9, small CNN (fashion_mnist_small_cnn.yaml)", *trained),
            EmbeddingSet("Fashion-MNIST 6-9, raw pixels", *raw)]


# ----------------------------------------------------------------------------- re-ranked evaluation
def folded_metrics(s: EmbeddingSet, rerank: Rerank) -> RetrievalMetrics:
    """Metrics pooled over ``FOLDS`` folds, each querying the others (a fixed, seeded split)."""
    fold = np.random.default_rng(0).permutation(len(s.vectors)) % FOLDS
    parts = []
    for f in range(FOLDS):
        q, c = rerank.apply(s.vectors[fold == f], s.vectors[fold != f])
        parts.append(retrieval_metrics(q, s.labels[fold == f], c, s.labels[fold != f]))
    return pool(parts)


def pool(parts: list[RetrievalMetrics]) -> RetrievalMetrics:
    """Means over all queries of several evaluations (weights: their query counts)."""
    w = np.array([p.n_queries for p in parts], dtype=np.float64)

    def mean(get: Callable[[RetrievalMetrics], float]) -> float:
        return float(np.dot(w, [get(p) for p in parts]) / w.sum())

    return RetrievalMetrics(mean(lambda p: p.precision_at_1), mean(lambda p: p.r_precision),
                            mean(lambda p: p.map_at_r),
                            {k: mean(lambda p, k=k: p.recall_at_k[k]) for k in parts[0].recall_at_k},
                            int(w.sum()), sum(p.n_lone for p in parts))


def grid() -> list[Rerank]:
    modes = (RerankMode.QUERY_EXPANSION, RerankMode.DATABASE_AUGMENTATION, RerankMode.BOTH)
    return [Rerank()] + [Rerank(m, n, a) for m in modes for n in NEIGHBOURS for a in ALPHAS]


def quality_table(sets: list[EmbeddingSet]) -> None:
    print(f"\nMAP@R / P@1, {FOLDS}-fold held-out queries against the rest (pooled); "
          "leave-one-out baseline first\n")
    print("| method | n | alpha | " + " | ".join(s.name for s in sets) + " |")
    print("|---|---|---|" + "---|" * len(sets))
    loo = [retrieval_metrics(s.vectors, s.labels) for s in sets]
    print("| none, leave-one-out | - | - | " + " | ".join(f"{m.map_at_r:.3f} / {m.precision_at_1:.3f}"
                                                         for m in loo) + " |", flush=True)
    base = None
    for rerank in grid():
        ms = [folded_metrics(s, rerank) for s in sets]
        if base is None:
            base = ms
        cells = [f"{m.map_at_r:.3f} ({m.map_at_r - b.map_at_r:+.3f}) / {m.precision_at_1:.3f}"
                 for m, b in zip(ms, base, strict=True)]
        n, alpha = ("-", "-") if rerank.mode is RerankMode.NONE else (rerank.neighbours, f"{rerank.alpha:g}")
        print(f"| {MODE_NAMES[rerank.mode]} | {n} | {alpha} | " + " | ".join(cells) + " |", flush=True)


# ----------------------------------------------------------------------------- query-time cost
def cost_table(cache: Path, size: int, queries: int) -> None:
    from annoy import AnnoyIndex  # the bench's only Annoy use; imported here so quality runs without it

    settings = Settings()
    dim, k = 128, 10
    rng = np.random.default_rng(0)  # bench_api.py's data: clusters of ~100, noise 0.1 per coordinate
    centers = rng.standard_normal((max(1, size // 100), dim)).astype(np.float32)
    vectors = centers[rng.integers(0, len(centers), size)] + 0.1 * rng.standard_normal((size, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    path = cache / f"annoy-{size}-{settings.annoy_trees}.ann"
    index = AnnoyIndex(dim, "euclidean")
    if not path.exists():
        t0 = time.perf_counter()
        for i, v in enumerate(vectors):
            index.add_item(i, v)
        index.build(settings.annoy_trees, n_jobs=1)
        index.save(str(path))
        print(f"\n(Annoy build {size:,} x {dim}: {time.perf_counter() - t0:.0f} s)")
        index.unload()
    index.load(str(path))
    del vectors
    sample = rng.integers(0, size, queries)
    search_k = settings.annoy_search_k
    print(f"\naQE query cost: Annoy {size:,} x {dim}-d, {settings.annoy_trees} trees, search_k {search_k}, "
          f"k={k}, {queries} queries (ids of the index, vector fetched first, as the API does)\n")
    print("| path | n | p50 ms | p99 ms | extra p50 / p99 ms |\n|---|---|---|---|---|")
    base: tuple[float, float] | None = None
    for n in (0, *NEIGHBOURS):
        ms = []
        for i in sample:
            t0 = time.perf_counter()
            q = np.asarray(index.get_item_vector(int(i)), dtype=np.float32)
            hits = index.get_nns_by_vector(q, k, search_k=search_k)
            if n:
                top = np.array([index.get_item_vector(j) for j in hits[:n]], dtype=np.float32)
                q2 = expand_query(q[None], top[None], alpha=3.0)[0]
                index.get_nns_by_vector(q2, k, search_k=search_k)
            ms.append((time.perf_counter() - t0) * 1000)
        p50, p99 = np.percentile(ms, [50, 99])
        base = base or (p50, p99)
        name = "one query" if not n else "aQE: query, expand, query again"
        extra = "-" if not n else f"{p50 - base[0]:+.3f} / {p99 - base[1]:+.3f}"
        print(f"| {name} | {n or '-'} | {p50:.3f} | {p99:.3f} | {extra} |", flush=True)
    index.unload()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", type=Path, default=Path("/tmp/lookalike-rerank-cache"))
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--skip-clothing", action="store_true")
    parser.add_argument("--skip-fashion", action="store_true")
    parser.add_argument("--skip-cost", action="store_true")
    parser.add_argument("--cost-size", type=int, default=1_000_000)
    parser.add_argument("--cost-queries", type=int, default=2000)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.cache.mkdir(parents=True, exist_ok=True)
    sets: list[EmbeddingSet] = []
    if not args.skip_clothing:
        if CLOTHING.is_dir():
            sets += clothing_sets(args.cache)
        else:
            print(f"(clothing-small not found at {CLOTHING}: its columns are skipped)")
    if not args.skip_fashion:
        sets += fashion_sets(args.cache)
    if sets:
        quality_table(sets)
    if not args.skip_cost:
        cost_table(args.cache, args.cost_size, args.cost_queries)


if __name__ == "__main__":
    main()
