"""Annoy index benchmark: build time, size, query rate/latency and recall@10 vs exact search.

Data: L2-normalised 128-d vectors drawn as clusters on the sphere (100 points per
cluster, isotropic noise ``--noise`` per coordinate), queries fresh from the same
clusters. Ground truth: core.index.exact_search. Builds go through build_index and
queries through VectorIndex.query (single thread, k=10), i.e. the service's path.

    PYTHONPATH=. MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736 \\
        /tmp/scratchvenv/bin/python bench/bench_index.py [--quick] [--sizes 100000,1000000]

The 1M size runs a reduced sweep (trees 50/100, search_k -1/10000) unless --full-1m;
hnswlib (for scale, one setting) runs up to --hnsw-max-size (its 1M build takes ~9 min
on 2 busy cores). Peak build memory is measured in child processes (``--memory-probe``), with and
without Annoy's on_disk_build. ``--real`` adds real-image vectors: Fashion-MNIST
pixels reduced to 128-d by PCA (70k), and EfficientNet-Lite0 (ImageNet trunk,
untrained 128-d head) embeddings of the first ``--real-embed`` images.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import hnswlib
import numpy as np
import torch

from core.config import Settings
from core.embedding import Backbone, Embedder, ModelSpec, Pretrained, build_model
from core.embedding.preprocess import normalize_uint8
from core.index import Metric, VectorIndex, build_index, exact_search, recall_at_k

DIM, K, PER_CLUSTER = 128, 10, 100
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
REDUCED_1M = {"trees": [50, 100], "search_k": [-1, 10_000]}


def clusters_on_sphere(n: int, noise: float, seed: int) -> np.ndarray:
    """n unit vectors around n/100 random centres; filled in chunks to keep memory at n*d*4."""
    rng = np.random.default_rng(seed)
    n_clusters = max(1, n // PER_CLUSTER)
    centres = rng.standard_normal((n_clusters, DIM), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((n, DIM), dtype=np.float32)
    for i in range(0, n, 8192):
        block = out[i:i + 8192]
        block[:] = centres[rng.integers(0, n_clusters, len(block))]
        block += noise * rng.standard_normal(block.shape, dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
    return out


def dataset(n: int, n_queries: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    data = clusters_on_sphere(n + n_queries, noise, seed=n)
    return data[n_queries:], data[:n_queries].copy()


def timed_queries(search, queries: np.ndarray) -> tuple[list, float, float, float]:
    """Run one query at a time; results, queries/s, p50 ms, p99 ms."""
    lat, results = np.empty(len(queries)), []
    for i, q in enumerate(queries):
        t = time.perf_counter()
        results.append(search(q))
        lat[i] = time.perf_counter() - t
    return results, len(queries) / lat.sum(), *(np.percentile(lat, [50, 99]) * 1e3)


def bench_annoy(vectors, queries, truth, metric: Metric, trees: list[int],
                search_ks: list[int], workdir: Path) -> list[dict]:
    rows = []
    ids = np.arange(len(vectors), dtype=np.int64)
    for n_trees in trees:
        target = workdir / f"{metric.value}-{n_trees}"
        t = time.perf_counter()
        manifest = build_index(target, ids, vectors, index_version=target.name,
                               model_version="bench", metric=metric, n_trees=n_trees)
        wall = time.perf_counter() - t
        size_mb = (target / "index.ann").stat().st_size / 1e6
        with VectorIndex.load(target) as index:
            timed_queries(lambda q: index.query(q, K, search_k=max(search_ks)), queries)  # warm
            for sk in search_ks:
                res, qps, p50, p99 = timed_queries(
                    lambda q, sk=sk: index.query(q, K, search_k=sk)[0], queries)
                rows.append(dict(n=len(vectors), metric=metric.value, trees=n_trees,
                                 build_s=manifest.build_seconds, wall_s=wall, size_mb=size_mb,
                                 search_k=sk, qps=qps, p50=p50, p99=p99,
                                 recall=recall_at_k(res, truth)))
                print(rows[-1], file=sys.stderr, flush=True)
        for f in target.iterdir():
            f.unlink()
        target.rmdir()
    return rows


def bench_hnsw(vectors, queries, truth, m: int = 16, ef_c: int = 100, ef: int = 64) -> dict:
    t = time.perf_counter()
    index = hnswlib.Index(space="l2", dim=DIM)
    index.init_index(max_elements=len(vectors), M=m, ef_construction=ef_c, random_seed=1)
    index.add_items(vectors, np.arange(len(vectors)), num_threads=-1)
    build = time.perf_counter() - t
    index.set_ef(ef)
    index.set_num_threads(1)
    res, qps, p50, p99 = timed_queries(lambda q: index.knn_query(q, K)[0][0], queries)
    return dict(n=len(vectors), m=m, ef_c=ef_c, ef=ef, build_s=build, qps=qps, p50=p50,
                p99=p99, recall=recall_at_k(res, truth))


# ------------------------------------------------------------------ real data
def fashion_mnist() -> np.ndarray:
    """All 70,000 Fashion-MNIST images, uint8 [n, 28, 28]."""
    parts = []
    for name in ("train", "t10k"):
        with gzip.open(FASHION_MNIST / f"{name}-images-idx3-ubyte.gz") as fh:
            parts.append(np.frombuffer(fh.read(), np.uint8, offset=16).reshape(-1, 28, 28))
    return np.concatenate(parts)


def real_sets(n_embed: int) -> dict[str, np.ndarray]:
    """Unit vectors from real images: pixel PCA-128 (all 70k), and an ImageNet
    EfficientNet-Lite0 trunk with an untrained 128-d head (first n_embed images, 64 px)."""
    pixels = fashion_mnist()
    flat = pixels.reshape(len(pixels), -1).astype(np.float32)
    flat -= flat.mean(axis=0)
    _, eigvec = np.linalg.eigh(flat.T @ flat)
    pca = flat @ eigvec[:, -DIM:]
    sets = {"fashion-mnist pixels, PCA-128": pca / np.linalg.norm(pca, axis=1, keepdims=True)}
    if n_embed:
        torch.manual_seed(0)
        spec = ModelSpec.for_backbone(Backbone.EFFICIENTNET_LITE0, input_size=64,
                                      pretrained=Pretrained.IMAGENET, embedding_dim=DIM)
        embedder = Embedder(build_model(spec), device=torch.device("cpu"), batch_size=256)
        chunks = []
        for i in range(0, n_embed, 1024):
            x = torch.from_numpy(pixels[i:min(i + 1024, n_embed)].copy()).unsqueeze(1).float()
            x = torch.nn.functional.interpolate(x, size=(64, 64), mode="bilinear")
            rgb = x.clamp(0, 255).to(torch.uint8).repeat(1, 3, 1, 1).permute(0, 2, 3, 1)
            chunks.append(embedder.embed_batch_tensor(normalize_uint8(rgb.contiguous(), spec)))
        sets[f"fashion-mnist, Lite0-ImageNet + random head, {n_embed:,}"] = np.concatenate(chunks)
    return sets


# ------------------------------------------------------------------ memory probe
def memory_probe(n: int, on_disk: bool, n_trees: int, noise: float) -> dict:
    """Child-process body: build once, report peak RSS (total, anonymous, file-backed)."""
    vectors = clusters_on_sphere(n, noise, seed=n)
    baseline = _proc_status()["VmRSS"]
    peaks = {"RssAnon": 0, "RssFile": 0, "VmRSS": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            for key, value in _proc_status().items():
                if key in peaks:
                    peaks[key] = max(peaks[key], value)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        t = time.perf_counter()
        build_index(Path(tmp) / "v", np.arange(n, dtype=np.int64), vectors, index_version="v",
                    model_version="bench", metric=Metric.EUCLIDEAN, n_trees=n_trees,
                    on_disk=on_disk)
        seconds = time.perf_counter() - t
    done.set()
    sampler.join()
    return dict(n=n, on_disk=on_disk, trees=n_trees, seconds=seconds, vectors_mb=baseline,
                maxrss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                anon_mb=peaks["RssAnon"], file_mb=peaks["RssFile"])


def _proc_status() -> dict[str, int]:
    """This process's memory counters from /proc/self/status, in MB."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if value.strip().endswith("kB"):
            out[key] = int(value.split()[0]) // 1024
    return out


def run_probe(n: int, on_disk: bool, n_trees: int, noise: float) -> dict:
    """One build in a fresh child. Run it while this process is still small: a child's
    ru_maxrss starts from the parent's RSS at fork time."""
    cmd = [sys.executable, __file__, "--memory-probe", "on_disk" if on_disk else "in_memory",
           "--sizes", str(n), "--trees", str(n_trees), "--noise", str(noise)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


# ------------------------------------------------------------------ tables
ANNOY_COLUMNS = [("n", "{n:,}"), ("metric", "{metric}"), ("trees", "{trees}"),
                 ("build s", "{build_s:.1f}"), ("build+publish s", "{wall_s:.1f}"),
                 ("index MB", "{size_mb:.0f}"), ("search_k", "{search_k}"), ("q/s", "{qps:,.0f}"),
                 ("p50 ms", "{p50:.3f}"), ("p99 ms", "{p99:.3f}"), ("recall@10", "{recall:.3f}")]
HNSW_COLUMNS = [("n", "{n:,}"), ("M", "{m}"), ("ef_construction", "{ef_c}"), ("ef", "{ef}"),
                ("build s", "{build_s:.1f}"), ("q/s", "{qps:,.0f}"), ("p50 ms", "{p50:.3f}"),
                ("p99 ms", "{p99:.3f}"), ("recall@10", "{recall:.3f}")]
SPREAD_COLUMNS = [("n", "{n:,}"), ("noise", "{noise}"), ("1-NN dist", "{d1:.3f}"),
                  ("10-NN dist", "{d10:.3f}"), ("trees", "{trees}"), ("search_k", "{search_k}"),
                  ("recall@10", "{recall:.3f}")]
MEMORY_COLUMNS = [("n", "{n:,}"), ("trees", "{trees}"), ("on_disk_build", "{on_disk}"),
                  ("build s", "{seconds:.1f}"), ("RSS before build MB", "{vectors_mb:.0f}"),
                  ("ru_maxrss MB", "{maxrss_mb:.0f}"), ("peak anon RSS MB", "{anon_mb}"),
                  ("peak file-backed RSS MB", "{file_mb}")]
REAL_COLUMNS = [("data", "{set}"), ("n", "{n:,}"), ("1-NN / 10-NN dist", "{d1:.3f} / {d10:.3f}"),
                ("index", "{index}"), ("trees", "{trees}"), ("search_k", "{search_k}"),
                ("q/s", "{qps:,.0f}"), ("p50 ms", "{p50:.3f}"), ("recall@10", "{recall:.3f}")]


def table(title: str, columns: list[tuple[str, str]], rows: list[dict]) -> None:
    """One markdown table (nothing when there are no rows)."""
    if not rows:
        return
    print(f"\n### {title}\n")
    print("| " + " | ".join(name for name, _ in columns) + " |")
    print("|" + "---|" * len(columns))
    for r in rows:
        print("| " + " | ".join(fmt.format(**r) for _, fmt in columns) + " |")


# ------------------------------------------------------------------ main
def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=ints, default=[100_000, 1_000_000])
    p.add_argument("--trees", type=ints, default=[10, 25, 50, 100])
    p.add_argument("--search-k", type=ints, default=[-1, 1000, 10_000])
    p.add_argument("--metrics", default="euclidean,angular")
    p.add_argument("--queries", type=int, default=300)
    p.add_argument("--noise", type=float, default=0.10)
    p.add_argument("--quick", action="store_true", help="20k vectors, small sweep, no probes")
    p.add_argument("--full-1m", action="store_true", help="full sweep at 1M too (slow)")
    p.add_argument("--hnsw-max-size", type=int, default=100_000,
                   help="run hnswlib only up to this size (its 1M build takes minutes)")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--no-synthetic", action="store_true", help="skip the synthetic sweeps")
    p.add_argument("--real", action="store_true", help="also real images (Fashion-MNIST)")
    p.add_argument("--real-embed", type=int, default=10_000,
                   help="images embedded with EfficientNet-Lite0 for --real (0: none)")
    p.add_argument("--no-spread", action="store_true")
    p.add_argument("--memory-probe", choices=["on_disk", "in_memory"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.trees, args.search_k = [20_000], [10, 50], [-1, 10_000]
        args.queries, args.no_memory = 200, True
    return args


def run_synthetic(args: argparse.Namespace, tmp: Path) -> tuple[list, list, list]:
    """The sweep over sizes x metrics x trees x search_k, hnswlib, and the spread table."""
    annoy_rows, hnsw_rows, spread_rows = [], [], []
    for n in args.sizes:
        vectors, queries = dataset(n, args.queries, args.noise)
        big = n >= 1_000_000 and not args.full_1m
        trees = [t for t in args.trees if t in REDUCED_1M["trees"]] if big else args.trees
        sks = [s for s in args.search_k if s in REDUCED_1M["search_k"]] if big else args.search_k
        truths = {}
        for metric in [Metric(m) for m in args.metrics.split(",")] + [Metric.EUCLIDEAN]:
            if metric in truths:
                continue
            t = time.perf_counter()
            truths[metric] = exact_search(vectors, queries, K, metric=metric)[0]
            print(f"exact {n:,} {metric.value}: {time.perf_counter() - t:.1f}s",
                  file=sys.stderr, flush=True)
            if metric.value in args.metrics.split(","):
                annoy_rows += bench_annoy(vectors, queries, truths[metric], metric, trees, sks, tmp)
        if n <= args.hnsw_max_size:
            hnsw_rows.append(bench_hnsw(vectors, queries, truths[Metric.EUCLIDEAN]))
        del vectors
    if not args.no_spread:
        n = min(args.sizes)
        for noise in (0.05, 0.10, 0.12, 0.15):
            vectors, queries = dataset(n, args.queries, noise)
            truth, dist = exact_search(vectors, queries, K, metric=Metric.EUCLIDEAN)
            for r in bench_annoy(vectors, queries, truth, Metric.EUCLIDEAN,
                                 [Settings().annoy_trees], [-1, 1000, 10_000], tmp):
                spread_rows.append(dict(r, noise=noise, d1=dist[:, 0].mean(),
                                        d10=dist[:, -1].mean()))
    return annoy_rows, hnsw_rows, spread_rows


def run_real(args: argparse.Namespace, tmp: Path) -> list[dict]:
    """Annoy sweep and hnswlib on real-image vectors; queries are held-out images."""
    rows = []
    for name, data in real_sets(args.real_embed).items():
        vectors, queries = data[:-args.queries], data[-args.queries:]
        truth, dist = exact_search(vectors, queries, K, metric=Metric.EUCLIDEAN)
        extra = dict(set=name, d1=dist[:, 0].mean(), d10=dist[:, -1].mean())
        for r in bench_annoy(vectors, queries, truth, Metric.EUCLIDEAN, args.trees,
                             args.search_k, tmp):
            rows.append(dict(r, index="annoy", **extra))
        rows.append(dict(bench_hnsw(vectors, queries, truth), index="hnswlib", trees="-",
                         search_k="-", **extra))
    return rows


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.memory_probe:
        print(json.dumps(memory_probe(args.sizes[0], args.memory_probe == "on_disk",
                                      args.trees[0], args.noise)))
        return
    memory_rows: list[dict] = []
    if not args.no_memory:  # first, while this process is small (see run_probe)
        memory_rows = [run_probe(max(args.sizes), on_disk, Settings().annoy_trees, args.noise)
                       for on_disk in (False, True)]
    annoy_rows, hnsw_rows, spread_rows, real_rows = [], [], [], []
    with tempfile.TemporaryDirectory(dir=".", prefix=".bench-index-") as tmp:
        if not args.no_synthetic:
            annoy_rows, hnsw_rows, spread_rows = run_synthetic(args, Path(tmp))
        if args.real:
            real_rows = run_real(args, Path(tmp))
    print(f"## Index benchmark\n\nSynthetic: {DIM}-d unit vectors, {PER_CLUSTER} per cluster, "
          f"noise {args.noise}; {args.queries} queries, k={K}; machine: {_machine()}")
    table("Annoy (build_index + VectorIndex.query, k=10, one thread)", ANNOY_COLUMNS, annoy_rows)
    table("hnswlib for scale (l2, k=10, one query thread)", HNSW_COLUMNS, hnsw_rows)
    table("Recall vs cluster spread (default trees, euclidean)", SPREAD_COLUMNS, spread_rows)
    table("Peak memory of one build (euclidean, child process)", MEMORY_COLUMNS, memory_rows)
    table("Real images (euclidean; hnswlib M=16 ef_c=100 ef=64 for scale)", REAL_COLUMNS,
          real_rows)


def _machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


if __name__ == "__main__":
    main()
