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
without Annoy's on_disk_build.
"""

from __future__ import annotations

import argparse
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

from core.config import Settings
from core.index import Metric, VectorIndex, build_index, exact_search, recall_at_k

DIM, K, PER_CLUSTER = 128, 10, 100
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
                print(_annoy_row(rows[-1]), file=sys.stderr, flush=True)
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
def _annoy_row(r: dict) -> str:
    return (f"| {r['n']:,} | {r['metric']} | {r['trees']} | {r['build_s']:.1f} | {r['wall_s']:.1f} "
            f"| {r['size_mb']:.0f} | {r['search_k']} | {r['qps']:,.0f} | {r['p50']:.3f} "
            f"| {r['p99']:.3f} | {r['recall']:.3f} |")


def print_tables(annoy_rows, hnsw_rows, memory_rows, spread_rows, header: str) -> None:
    print(header)
    if annoy_rows:
        print("\n### Annoy (build_index + VectorIndex.query, k=10, one thread)\n")
        print("| n | metric | trees | build s | build+publish s | index MB | search_k | q/s "
              "| p50 ms | p99 ms | recall@10 |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in annoy_rows:
            print(_annoy_row(r))
    if hnsw_rows:
        print("\n### hnswlib for scale (l2, k=10, one query thread)\n")
        print("| n | M | ef_construction | ef | build s | q/s | p50 ms | p99 ms | recall@10 |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in hnsw_rows:
            print(f"| {r['n']:,} | {r['m']} | {r['ef_c']} | {r['ef']} | {r['build_s']:.1f} "
                  f"| {r['qps']:,.0f} | {r['p50']:.3f} | {r['p99']:.3f} | {r['recall']:.3f} |")
    if spread_rows:
        print("\n### Recall vs cluster spread (default trees, euclidean)\n")
        print("| n | noise | 1-NN dist | 10-NN dist | trees | search_k | recall@10 |")
        print("|---|---|---|---|---|---|---|")
        for r in spread_rows:
            print(f"| {r['n']:,} | {r['noise']} | {r['d1']:.3f} | {r['d10']:.3f} | {r['trees']} "
                  f"| {r['search_k']} | {r['recall']:.3f} |")
    if memory_rows:
        print("\n### Peak memory of one build (euclidean, child process)\n")
        print("| n | trees | on_disk_build | build s | RSS before build MB | ru_maxrss MB "
              "| peak anon RSS MB | peak file-backed RSS MB |")
        print("|---|---|---|---|---|---|---|---|")
        for r in memory_rows:
            print(f"| {r['n']:,} | {r['trees']} | {r['on_disk']} | {r['seconds']:.1f} "
                  f"| {r['vectors_mb']:.0f} | {r['maxrss_mb']:.0f} | {r['anon_mb']} "
                  f"| {r['file_mb']} |")


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
    p.add_argument("--only-memory", action="store_true")
    p.add_argument("--no-spread", action="store_true")
    p.add_argument("--memory-probe", choices=["on_disk", "in_memory"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.trees, args.search_k = [20_000], [10, 50], [-1, 10_000]
        args.queries, args.no_memory = 200, True
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.memory_probe:
        print(json.dumps(memory_probe(args.sizes[0], args.memory_probe == "on_disk",
                                      args.trees[0], args.noise)))
        return
    metrics = [Metric(m) for m in args.metrics.split(",")]
    annoy_rows, hnsw_rows, spread_rows, memory_rows = [], [], [], []
    default_trees = Settings().annoy_trees
    if not args.no_memory:
        n = max(args.sizes)
        memory_rows = [run_probe(n, on_disk, default_trees, args.noise) for on_disk in (False, True)]
        if args.only_memory:
            print_tables([], [], memory_rows, [], "## Index build memory")
            return
    with tempfile.TemporaryDirectory(dir=".", prefix=".bench-index-") as tmp:
        for n in args.sizes:
            vectors, queries = dataset(n, args.queries, args.noise)
            big = n >= 1_000_000 and not args.full_1m
            trees = [t for t in args.trees if t in REDUCED_1M["trees"]] if big else args.trees
            sks = [s for s in args.search_k if s in REDUCED_1M["search_k"]] if big else args.search_k
            truths = {}
            for metric in metrics:
                t = time.perf_counter()
                truths[metric] = exact_search(vectors, queries, K, metric=metric)[0]
                print(f"exact {n:,} {metric.value}: {time.perf_counter() - t:.1f}s",
                      file=sys.stderr, flush=True)
                annoy_rows += bench_annoy(vectors, queries, truths[metric], metric, trees, sks,
                                          Path(tmp))
            if n <= args.hnsw_max_size:
                if Metric.EUCLIDEAN not in truths:
                    truths[Metric.EUCLIDEAN] = exact_search(vectors, queries, K,
                                                            metric=Metric.EUCLIDEAN)[0]
                hnsw_rows.append(bench_hnsw(vectors, queries, truths[Metric.EUCLIDEAN]))
                print(f"hnswlib {n:,}: build {hnsw_rows[-1]['build_s']:.1f}s",
                      file=sys.stderr, flush=True)
            del vectors
        if not args.no_spread:
            n = min(args.sizes)
            for noise in (0.05, 0.10, 0.12, 0.15):
                vectors, queries = dataset(n, args.queries, noise)
                truth, dist = exact_search(vectors, queries, K, metric=Metric.EUCLIDEAN)
                for r in bench_annoy(vectors, queries, truth, Metric.EUCLIDEAN, [default_trees],
                                     [-1, 1000, 10_000], Path(tmp)):
                    spread_rows.append(dict(r, noise=noise, d1=dist[:, 0].mean(),
                                            d10=dist[:, -1].mean()))
    header = (f"## Index benchmark\n\n{DIM}-d unit vectors, {PER_CLUSTER} per cluster, noise "
              f"{args.noise}, {args.queries} queries, k={K}; machine: {_machine()}")
    print_tables(annoy_rows, hnsw_rows, memory_rows, spread_rows, header)


def _machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


if __name__ == "__main__":
    main()
