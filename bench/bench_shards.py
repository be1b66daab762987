"""Sharded Annoy indexes: build cost, bytes per shard, fan-out + merge latency and recall.

Backs docs/SCALING.md with a measured run. The same N vectors are split into S
shards, either by a hash of the id or by category (whole categories packed onto
shards, largest first), and every shard is its own index directory built with
``core.index.build_index`` (50 trees, euclidean, one build thread). A query fans
out to every shard (``k`` each), and the per-shard lists are merged by distance.

Data: unit vectors (128-d unless ``--dim``) in three levels (category centre ->
cluster centre, 100 points per cluster -> point; noise as bench_index.py),
category sizes Zipf-skewed, so categories are coherent regions of the space, as
product categories are. Unless ``--no-real``, also Fashion-MNIST pixels reduced
by PCA to the same size, its 10 labels as categories (real images, real overlap).

Per configuration: build seconds (sum = one builder, max shard = parallel
builders), index bytes per shard (what a shard host must hold in RAM), query
latency and recall@10 against ``exact_search`` for three fan-outs: sequential,
a thread pool (Annoy releases the GIL), and "ideal parallel" = the slowest shard
of each query + the merge, computed from the sequential per-shard timings (what
S hosts would give with no network cost; a simulation, not a measurement of
hosts). search_k per shard is either the full setting or split S ways. Category
queries: routed to the query's shard only (its category known, no filter:
recall against the global truth), and the service's filtered query (over-fetch
8k+32, keep the category) on every hash shard or on the one category shard.

    PYTHONPATH=. MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736 \\
        /tmp/scratchvenv/bin/python bench/bench_shards.py [--quick]
"""

from __future__ import annotations

import argparse
import gzip
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.index import Metric, VectorIndex, build_index, exact_search, recall_at_k

K, PER_CLUSTER, TREES = 10, 100, 50
FILTER_FETCH = 8 * K + 32  # service.searcher.engine.first_fetch with a filter
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@dataclass
class Data:
    name: str
    vectors: np.ndarray
    cats: np.ndarray
    queries: np.ndarray
    query_cats: np.ndarray


def synthetic(n: int, n_queries: int, dim: int, n_cats: int, zipf: float, noise: float,
              cluster_spread: float, seed: int = 0) -> Data:
    """Category centre -> cluster centres -> points, all unit vectors; sizes ~ rank^-zipf."""
    rng = np.random.default_rng(seed)
    cat_centres = _unit(rng.standard_normal((n_cats, dim), dtype=np.float32))
    weights = np.arange(1, n_cats + 1, dtype=np.float64) ** -zipf
    n_clusters = max(n_cats, (n + n_queries) // PER_CLUSTER)
    cluster_cat = rng.choice(n_cats, size=n_clusters, p=weights / weights.sum())
    centres = _unit(cat_centres[cluster_cat]
                    + cluster_spread * rng.standard_normal((n_clusters, dim), dtype=np.float32))
    total = n + n_queries
    out = np.empty((total, dim), dtype=np.float32)
    which = rng.integers(0, n_clusters, total)
    for i in range(0, total, 8192):  # in blocks: memory stays at n * d * 4
        block = out[i:i + 8192]
        block[:] = centres[which[i:i + 8192]]
        block += noise * rng.standard_normal(block.shape, dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
    cats = cluster_cat[which]
    return Data(f"synthetic {dim}-d, {n_cats} categories (Zipf {zipf})", out[n_queries:],
                cats[n_queries:], out[:n_queries].copy(), cats[:n_queries].copy())


def fashion_mnist_pca(n_queries: int, dim: int) -> Data:
    """All 70k Fashion-MNIST images as PCA-``dim`` unit vectors; labels are categories."""
    pixels, labels = [], []
    for name in ("train", "t10k"):
        with gzip.open(FASHION_MNIST / f"{name}-images-idx3-ubyte.gz") as fh:
            pixels.append(np.frombuffer(fh.read(), np.uint8, offset=16).reshape(-1, 784))
        with gzip.open(FASHION_MNIST / f"{name}-labels-idx1-ubyte.gz") as fh:
            labels.append(np.frombuffer(fh.read(), np.uint8, offset=8).astype(np.int64))
    flat = np.concatenate(pixels).astype(np.float32)
    flat -= flat.mean(axis=0)
    _, eigvec = np.linalg.eigh(flat.T @ flat)
    vecs = _unit(flat @ eigvec[:, -dim:])
    cats = np.concatenate(labels)
    order = np.random.default_rng(1).permutation(len(vecs))  # held-out queries, all labels
    vecs, cats = vecs[order], cats[order]
    return Data(f"Fashion-MNIST pixels, PCA-{dim}, 10 labels", vecs[n_queries:], cats[n_queries:],
                vecs[:n_queries].copy(), cats[:n_queries].copy())


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


# ------------------------------------------------------------------ sharding
def hash_shard(ids: np.ndarray, s: int) -> np.ndarray:
    """Shard of each id by splitmix64 of the id (not ``id % s``: ids are often sequential)."""
    z = ids.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return ((z ^ (z >> np.uint64(31))) % np.uint64(s)).astype(np.int64)


def category_shards(cats: np.ndarray, s: int) -> np.ndarray:
    """category -> shard: whole categories, largest first onto the emptiest shard."""
    sizes = np.bincount(cats)
    load, owner = np.zeros(s, dtype=np.int64), np.zeros(len(sizes), dtype=np.int64)
    for c in np.argsort(-sizes, kind="stable"):
        owner[c] = int(np.argmin(load))
        load[owner[c]] += sizes[c]
    return owner


# ------------------------------------------------------------------ one configuration
def build_shards(data: Data, assign: np.ndarray, s: int, workdir: Path) -> tuple[list, dict]:
    """One index directory per shard; returns the loaded shards and the build numbers."""
    shards, seconds, sizes, counts = [], [], [], []
    for j in range(s):
        rows = np.flatnonzero(assign == j)
        target = workdir / f"shard-{j}"
        m = build_index(target, rows.astype(np.int64), data.vectors[rows], index_version=target.name,
                        model_version="bench", metric=Metric.EUCLIDEAN, n_trees=TREES, n_jobs=1)
        seconds.append(m.build_seconds)
        sizes.append(sum(f.stat().st_size for f in target.iterdir()))
        counts.append(len(rows))
        shards.append(VectorIndex.load(target))
    return shards, dict(items_min=min(counts), items_max=max(counts), build_sum=sum(seconds),
                        build_max=max(seconds), mb_max=max(sizes) / 1e6,
                        mb_mean=sum(sizes) / s / 1e6, bytes_per=sum(sizes) / len(data.vectors))


def merge(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.concatenate([p[0] for p in parts])
    dists = np.concatenate([p[1] for p in parts])
    order = np.argsort(dists, kind="stable")[:k]
    return ids[order], dists[order]


def fan_out(shards: list, queries: np.ndarray, search_k: int, pool: ThreadPoolExecutor) -> dict:
    """Latency (ms) of sequential, threaded and ideal-parallel fan-out; recall inputs."""
    n = len(queries)
    seq, ideal, thr, results = np.empty(n), np.empty(n), np.empty(n), []
    for i, q in enumerate(queries):
        parts, slowest = [], 0.0
        t0 = time.perf_counter()
        for shard in shards:
            t = time.perf_counter()
            parts.append(shard.query(q, K, search_k=search_k))
            slowest = max(slowest, time.perf_counter() - t)
        t_merge = time.perf_counter()
        ids, _ = merge(parts, K)
        t1 = time.perf_counter()
        seq[i], ideal[i] = t1 - t0, slowest + (t1 - t_merge)
        results.append(ids)
    for i, q in enumerate(queries):
        t0 = time.perf_counter()
        merge(list(pool.map(lambda sh, q=q: sh.query(q, K, search_k=search_k), shards)), K)
        thr[i] = time.perf_counter() - t0
    return dict(qps=n / seq.sum(), **_pcts("seq", seq), **_pcts("thr", thr),
                **_pcts("ideal", ideal), results=results)


def _pcts(name: str, seconds: np.ndarray) -> dict:
    p50, p99 = np.percentile(seconds, [50, 99]) * 1e3
    return {f"{name}50": p50, f"{name}99": p99}


def timed(fn, queries: np.ndarray) -> tuple[list, float, float]:
    lat, out = np.empty(len(queries)), []
    for i, q in enumerate(queries):
        t = time.perf_counter()
        out.append(fn(i, q))
        lat[i] = time.perf_counter() - t
    p50, p99 = np.percentile(lat, [50, 99]) * 1e3
    return out, p50, p99


def filtered(shards: list, q: np.ndarray, cat: int, cats: np.ndarray, search_k: int) -> np.ndarray:
    """The service's first round with a category filter: over-fetch, merge, keep the category."""
    sk = max(search_k, FILTER_FETCH * TREES)  # as engine.candidates widens search_k
    ids, _ = merge([sh.query(q, FILTER_FETCH, search_k=sk) for sh in shards], FILTER_FETCH)
    return ids[cats[ids] == cat][:K]


# ------------------------------------------------------------------ the run
def run(data: Data, shard_counts: list[int], search_k: int, workdir: Path) -> tuple[list, list, list]:
    truth = exact_search(data.vectors, data.queries, K, metric=Metric.EUCLIDEAN)[0]
    cat_truth = np.empty_like(truth)
    for c in np.unique(data.query_cats):
        members, asked = np.flatnonzero(data.cats == c), np.flatnonzero(data.query_cats == c)
        cat_truth[asked] = members[exact_search(data.vectors[members], data.queries[asked], K,
                                                metric=Metric.EUCLIDEAN)[0]]
    ids = np.arange(len(data.vectors), dtype=np.int64)
    build_rows, query_rows, cat_rows = [], [], []
    for s in shard_counts:
        for scheme in (["-"] if s == 1 else ["hash", "category"]):
            owner = category_shards(data.cats, s) if scheme == "category" else None
            assign = owner[data.cats] if owner is not None else hash_shard(ids, s)
            with tempfile.TemporaryDirectory(dir=workdir) as tmp:
                shards, b = build_shards(data, assign, s, Path(tmp))
                build_rows.append(dict(scheme=scheme, s=s, **b))
                print(build_rows[-1], file=sys.stderr, flush=True)
                with ThreadPoolExecutor(max_workers=s) as pool:
                    fan_out(shards, data.queries[:100], search_k, pool)  # warm the page cache
                    for sk in sorted({search_k, max(search_k // s, K)}, reverse=True):
                        r = fan_out(shards, data.queries, sk, pool)
                        recall = recall_at_k(r.pop("results"), truth)
                        query_rows.append(dict(scheme=scheme, s=s, sk=sk, recall=recall, **r))
                        print(query_rows[-1], file=sys.stderr, flush=True)
                cat_rows += category_queries(data, shards, owner, scheme, s, search_k, truth,
                                             cat_truth)
                for shard in shards:
                    shard.close()
    return build_rows, query_rows, cat_rows


def category_queries(data: Data, shards: list, owner: np.ndarray | None, scheme: str, s: int,
                     search_k: int, truth: np.ndarray, cat_truth: np.ndarray) -> list[dict]:
    """Filter-by-category queries (all shards, or the one routed shard) and routed top-k."""
    rows = []

    def targets(i: int) -> list:
        return [shards[owner[data.query_cats[i]]]] if owner is not None else shards

    res, p50, p99 = timed(lambda i, q: filtered(targets(i), q, data.query_cats[i], data.cats,
                                                search_k), data.queries)
    rows.append(dict(scheme=scheme, s=s, query="category filter", asked=len(targets(0)),
                     p50=p50, p99=p99, recall=recall_at_k(res, cat_truth),
                     short=np.mean([len(r) < K for r in res])))
    if owner is not None:
        res, p50, p99 = timed(lambda i, q: targets(i)[0].query(q, K, search_k=search_k)[0],
                              data.queries)
        rows.append(dict(scheme=scheme, s=s, query="routed, no filter", asked=1, p50=p50, p99=p99,
                         recall=recall_at_k(res, truth), short=0.0))
    return rows


BUILD_COLUMNS = [
    ("sharding", "{scheme}"), ("shards", "{s}"),
    ("items/shard min-max", "{items_min:,}-{items_max:,}"),
    ("build s, sum (1 builder)", "{build_sum:.1f}"),
    ("build s, largest shard (S builders)", "{build_max:.1f}"),
    ("index MB/shard max (mean)", "{mb_max:.0f} ({mb_mean:.0f})"), ("bytes/vector", "{bytes_per:.0f}"),
]
QUERY_COLUMNS = [
    ("sharding", "{scheme}"), ("shards", "{s}"), ("search_k/shard", "{sk}"),
    ("q/s seq", "{qps:,.0f}"), ("seq p50/p99 ms", "{seq50:.2f} / {seq99:.2f}"),
    ("threads p50/p99 ms", "{thr50:.2f} / {thr99:.2f}"),
    ("ideal parallel p50/p99 ms", "{ideal50:.2f} / {ideal99:.2f}"), ("recall@10", "{recall:.3f}"),
]
CAT_COLUMNS = [
    ("sharding", "{scheme}"), ("shards", "{s}"), ("query", "{query}"), ("shards asked", "{asked}"),
    ("p50/p99 ms", "{p50:.2f} / {p99:.2f}"), ("recall@10", "{recall:.3f}"),
    ("short of k", "{short:.1%}"),
]


def table(title: str, columns: list[tuple[str, str]], rows: list[dict]) -> None:
    print(f"\n#### {title}\n")
    print("| " + " | ".join(name for name, _ in columns) + " |")
    print("|" + "---|" * len(columns))
    for r in rows:
        print("| " + " | ".join(fmt.format(**r) for _, fmt in columns) + " |")


def describe(data: Data) -> str:
    truth, dist = exact_search(data.vectors, data.queries, K, metric=Metric.EUCLIDEAN)
    same = (data.cats[truth] == data.query_cats[:, None]).mean()
    sizes = np.bincount(data.cats)
    return (f"{data.name}: n = {len(data.vectors):,}, {len(data.queries)} queries, k = {K}; "
            f"1-NN / 10-NN distance {dist[:, 0].mean():.3f} / {dist[:, -1].mean():.3f}; "
            f"largest category {sizes.max() / sizes.sum():.1%} of the items; "
            f"exact top-10 neighbours in the query's own category: {same:.1%}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=400_000)
    p.add_argument("--shards", type=lambda t: [int(x) for x in t.split(",")], default=[1, 2, 4, 8])
    p.add_argument("--queries", type=int, default=500)
    p.add_argument("--search-k", type=int, default=10_000, help="the service default")
    p.add_argument("--dim", type=int, default=128, help="embedding size (64 halves memory)")
    p.add_argument("--categories", type=int, default=48)
    p.add_argument("--zipf", type=float, default=0.8)
    p.add_argument("--noise", type=float, default=0.10)
    p.add_argument("--cluster-spread", type=float, default=0.10)
    p.add_argument("--no-real", action="store_true", help="skip Fashion-MNIST")
    p.add_argument("--quick", action="store_true", help="n = 100,000, 300 queries")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.queries = 100_000, 300
    if min(args.shards) < 1 or args.n < 1000 or not 1 <= args.dim <= 784:
        p.error("--shards must be positive, --n at least 1000, --dim in 1..784")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    load0 = os.getloadavg()[0]
    sets = [synthetic(args.n, args.queries, args.dim, args.categories, args.zipf, args.noise,
                      args.cluster_spread)]
    if not args.no_real:
        sets.append(fashion_mnist_pca(args.queries, args.dim))
    print(f"## Sharded indexes ({TREES} trees, euclidean, 1 build thread, k = {K})\n")
    print(f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}; load average {load0:.1f} at start")
    with tempfile.TemporaryDirectory(dir=".", prefix=".bench-shards-") as tmp:
        for data in sets:
            print(f"\n### {describe(data)}")
            builds, queries, cats = run(data, args.shards, args.search_k, Path(tmp))
            table("Build and size", BUILD_COLUMNS, builds)
            table("Fan-out to every shard + merge (ideal parallel = slowest shard + merge, "
                  "computed)", QUERY_COLUMNS, queries)
            table(f"Category queries (search_k {args.search_k} per shard asked)", CAT_COLUMNS, cats)
    print(f"\nLoad average {os.getloadavg()[0]:.1f} at the end.")


if __name__ == "__main__":
    main()
