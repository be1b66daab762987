"""Reindex wall time with 1 and 2 Celery worker processes, split into its stages.

For each catalog size (Fashion-MNIST items; default 10,000 and 70,000): a throwaway
PostgreSQL database, one Redis, the items imported, an untrained small CNN (64 px,
128-d) registered. Then, for 1 and then 2 worker processes (``-c 1`` / ``-c 2``,
torch one thread per process), every stored vector is deleted and a forced REINDEX
is timed end to end; the job's own timings split it into embed (catch-up of every
image, fanned out over the workers) / build (Annoy, ``annoy_trees`` trees, all
cores) / verify (self-recall on ``verify_sample_size`` queries) / publish. The
scaling ratio is wall(1 process) / wall(2 processes).

``--million`` adds the index build alone for 1,000,000 x 128-d random unit vectors
(core.index.build_index, in a child process so that its peak RSS is its own).

    PYTHONPATH=. MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736 \
        /tmp/scratchvenv/bin/python bench/bench_reindex.py [--quick] [--million]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from alembic import command
from reindex_harness import timed_reindex

from core.catalog.sample import Split
from core.config import LogLevel, Settings
from core.db import make_engine, make_session_factory
from core.embedding import ModelSpec
from core.index import Metric, build_index
from migrations import alembic_config
from tests.support.processes import REPO
from tests.support.servers import PostgresServer, RedisServer
from tests.worker.support import WorkerProcess, analyze, import_fmnist, register_tiny_model
from worker.celery_app import CeleryTaskSender, make_celery

STAGES = ("embed", "build", "verify", "publish")


def reindex_once(pg: PostgresServer, rd: RedisServer, root: Path, n: int) -> list[dict]:
    """Rows for one catalog size: one per worker count."""
    url = pg.create_database(f"bench{n}")
    command.upgrade(alembic_config(url), "head")
    settings = Settings(home=root / f"home{n}", database_url=url, broker_url=rd.url, torch_threads=1,
                        fresh_rebuild_threshold=10**9, log_level=LogLevel.INFO)
    engine = make_engine(settings)
    sessions = make_session_factory(engine)
    register_tiny_model(settings, sessions, spec=ModelSpec(), version=f"m-bench-{n}")
    started = time.perf_counter()
    import_fmnist(settings, sessions, n, split=Split.ALL)  # train + test: up to 70,000
    analyze(engine)  # table statistics, as autovacuum keeps them on a live database
    print(f"imported {n:,} items in {time.perf_counter() - started:.0f}s", file=sys.stderr)
    app = make_celery(settings)
    sender = CeleryTaskSender(app)
    rows = []
    for workers in (1, 2):
        worker = WorkerProcess(settings, root / f"worker-{n}-{workers}.log", concurrency=workers)
        rows.append({"n": n, "workers": workers, **timed_reindex(settings, sessions, sender, [worker])})
    app.close()
    engine.dispose()
    return rows


def _status_mib(field: str) -> float:
    """A memory figure of this process from /proc/self/status (VmRSS now, VmHWM peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def million_child(n: int, dim: int, trees: int, out: Path) -> None:
    """In a child: build the index and report seconds, resident memory before and peak."""
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    vectors /= np.sqrt(np.einsum("ij,ij->i", vectors, vectors))[:, None]  # in place: no n x d temporary
    ids = np.arange(n, dtype=np.int64)
    before = _status_mib("VmRSS")
    started = time.perf_counter()
    build_index(out, ids, vectors, index_version="bench", model_version="bench", metric=Metric.EUCLIDEAN,
                n_trees=trees)
    seconds = time.perf_counter() - started
    size = sum(f.stat().st_size for f in out.iterdir())
    print(json.dumps({"seconds": seconds, "rss_before_mib": before, "peak_mib": _status_mib("VmHWM"),
                      "disk_mib": size / 2**20}))


def million(root: Path, n: int, dim: int, trees: int) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, "--million-child", str(n), str(dim), str(trees), str(root / "million")],
        cwd=REPO, check=True, capture_output=True, text=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 and 5,000 items")
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=None)
    parser.add_argument("--million", action="store_true", help="also time a 1M x 128-d index build")
    parser.add_argument("--million-only", action="store_true", help="only the 1M x 128-d index build")
    parser.add_argument("--million-child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.million_child:
        n, dim, trees, out = args.million_child
        million_child(int(n), int(dim), int(trees), Path(out))
        return
    sizes = args.sizes or ([2000, 5000] if args.quick else [10_000, 70_000])
    root = Path(tempfile.mkdtemp(prefix="bench-reindex-"))
    trees = Settings().annoy_trees
    try:
        run(args, sizes, root, trees)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(args: argparse.Namespace, sizes: list[int], root: Path, trees: int) -> None:
    if args.million_only:
        print_million(million(root, 1_000_000, 128, trees), trees)
        return
    pg, rd = PostgresServer.start(), RedisServer.start()
    try:
        rows = [row for n in sizes for row in reindex_once(pg, rd, root, n)]
    finally:
        rd.close()
        pg.stop()
    print(f"\nReindex from scratch (every image embedded), small CNN 64 px -> 128-d, {trees} trees, "
          "torch 1 thread per worker process, PostgreSQL + Redis on loopback\n")
    print("| items | worker processes | embed s | build s | verify s | publish s | wall s | images/s "
          "| self-recall@10 |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['n']:,} | {r['workers']} | " + " | ".join(f"{r[s]:.2f}" for s in STAGES)
              + f" | {r['wall']:.1f} | {r['n'] / r['wall']:,.0f} | {r['recall']:.3f} |")
    print("\n| items | scaling 1 -> 2 processes (wall) | embed stage |")
    print("|---:|---:|---:|")
    for n in sizes:
        one, two = (next(r for r in rows if r["n"] == n and r["workers"] == w) for w in (1, 2))
        print(f"| {n:,} | {one['wall'] / two['wall']:.2f}x | {one['embed'] / two['embed']:.2f}x |")
    if args.million:
        print_million(million(root, 1_000_000, 128, trees), trees)


def print_million(m: dict, trees: int) -> None:
    print(f"\nIndex build, 1,000,000 x 128-d random unit vectors, {trees} trees (core.index.build_index, "
          "its own process; resident before = imports + the 512 MB of vectors)\n")
    print("| seconds | resident before MiB | peak resident MiB | build adds MiB | on disk MiB |")
    print("|---:|---:|---:|---:|---:|")
    print(f"| {m['seconds']:.1f} | {m['rss_before_mib']:.0f} | {m['peak_mib']:.0f} | "
          f"{m['peak_mib'] - m['rss_before_mib']:.0f} | {m['disk_mib']:.0f} |")


if __name__ == "__main__":
    main()
