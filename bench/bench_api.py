"""API latency and throughput: similar-by-id over HTTP on a large index, image search, worker memory.

    PYTHONPATH=. MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736 python bench/bench_api.py [--quick]

Builds (once, cached in --home) a catalog of N items with one image each and a
synthetic 128-d unit vector per image (clustered, 100 per cluster), an Annoy index
over them with the default settings (50 trees, search_k 10000; ``--search-k`` serves
with another), and a registered
(untrained) small-CNN model. Then it starts ``lookalike serve`` (gunicorn, 2
workers) and measures, in one run:

1. Annoy's own query time in this process on the same index (the same call the
   server makes: ``vector(id)`` + ``query(v, 2k+8, search_k)``);
2. sequential similar-by-id requests on one keep-alive connection, split with the
   ``Server-Timing`` header into index / metadata / serialisation / framework, and
   the workers' CPU time per request (user + system, from /proc), which the
   throughput on two shared cores follows;
3. throughput with wrk (if installed; else Python threads) at a few concurrencies;
4. search by uploaded image, split into decode / embed / search / metadata;
5. each worker's memory from /proc/<pid>/smaps_rollup, and its share of the index file.

With ``--lists`` the index gets its precomputed neighbour lists (core/index/neighbours.py)
and its metadata table (core/index/metadata_table.py), computed once and cached with the
dataset, and steps 2-3 and 5 run three times, side by side: today's Annoy path
(``LOOKALIKE_SERVE_NEIGHBOUR_LISTS=false``), the lists with SQL metadata
(``LOOKALIKE_SERVE_METADATA_TABLE=false``), and the lists with the table and live set.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from alembic import command
from api_harness import (
    cpu_seconds,
    memory_of,
    pct,
    python_load,
    sequential,
    start_server,
    stop_server,
    wrk_run,
)
from PIL import Image
from sqlalchemy import insert

from core.config import Settings
from core.db import IndexStatus, IndexVersion, Item, ItemImage, make_engine, make_session_factory, session_scope
from core.embedding import ModelSpec, build_model, save_checkpoint
from core.index import IndexManifest, Metric, VectorIndex, build_index
from core.index.metadata_table import add_metadata_table
from core.index.neighbours import add_neighbour_lists
from core.registry import activate_model, get_model, register_model
from migrations import alembic_config
from service.filters import Filters
from service.searcher.engine import first_fetch
from service.searcher.metadata import Exclusions

DIM, K, CATEGORIES = 128, 10, 20


# ----------------------------------------------------------------------------- dataset
def build_dataset(home: Path, n: int) -> dict:
    marker = home / "dataset.json"
    if marker.exists() and json.loads(marker.read_text())["n"] == n:
        return json.loads(marker.read_text())
    shutil.rmtree(home, ignore_errors=True)
    settings = Settings(home=home)
    command.upgrade(alembic_config(settings.resolved_database_url), "head")
    engine = make_engine(settings)
    sessions = make_session_factory(engine)
    t0 = time.perf_counter()
    spec = ModelSpec()  # small CNN, 128-d, 64 px; untrained weights: latency is what is measured
    checkpoint = settings.models_dir / "m-bench.pt"
    save_checkpoint(checkpoint, build_model(spec))
    register_model(sessions, checkpoint_path=checkpoint, spec=spec.to_dict(), version="m-bench")
    activate_model(sessions, "m-bench")
    now = datetime.now(timezone.utc)
    with engine.begin() as conn:
        for start in range(0, n, 50_000):
            rows = range(start, min(n, start + 50_000))
            conn.execute(insert(Item), [
                {"external_id": f"b{i:07d}", "title": f"Bench item {i}", "category": f"cat{i % CATEGORIES:02d}",
                 "attributes": {"color": f"c{i % 8}", "size": 36 + i % 10}, "group_key": f"g{i // 5}",
                 "created_at": now, "updated_at": now} for i in rows])
            conn.execute(insert(ItemImage), [
                {"item_id": i + 1, "position": 0, "source_uri": "", "media_key": f"{i:064x}", "width": 64,
                 "height": 64, "created_at": now, "updated_at": now} for i in rows])
    sql_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((max(1, n // 100), DIM)).astype(np.float32)
    vectors = centers[rng.integers(0, len(centers), n)] + 0.1 * rng.standard_normal((n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(1, n + 1, dtype=np.int64)  # image ids of a fresh database
    directory = settings.indexes_dir / "i-bench"
    t1 = time.perf_counter()
    manifest = build_index(directory, ids, vectors, index_version="i-bench", model_version="m-bench",
                           metric=Metric.EUCLIDEAN, n_trees=settings.annoy_trees)
    build_s = time.perf_counter() - t1
    model_id = get_model(sessions, "m-bench").id
    with session_scope(sessions) as s:
        s.add(IndexVersion(version="i-bench", model_id=model_id, path=str(directory), item_count=n,
                           image_count=n, status=IndexStatus.ACTIVE, n_trees=manifest.n_trees,
                           build_seconds=build_s, max_embedding_created_at=now, published_at=now))
    info = {"n": n, "sql_seconds": round(sql_s, 1), "build_seconds": round(build_s, 1),
            "index_mb": round((directory / "index.ann").stat().st_size / 2**20)}
    np.save(home / "vectors.npy", vectors)  # the neighbour lists are computed from them (--lists)
    marker.write_text(json.dumps(info))
    engine.dispose()
    return info


def ensure_lists(home: Path, settings: Settings) -> IndexManifest:
    """The bench index with its neighbour lists (computed once, at the settings' K and method)."""
    directory = home / "artifacts" / "indexes" / "i-bench"
    manifest = IndexManifest.read(directory)
    if manifest.neighbours_k:
        return manifest
    vectors = np.load(home / "vectors.npy", mmap_mode="r")
    return add_neighbour_lists(directory, np.asarray(vectors), k=settings.neighbour_list_k,
                               exact_limit=settings.neighbour_exact_limit, search_k=settings.neighbour_search_k)


def ensure_table(home: Path, settings: Settings) -> IndexManifest:
    """The bench index with its metadata table (read from the bench database once)."""
    directory = home / "artifacts" / "indexes" / "i-bench"
    manifest = IndexManifest.read(directory)
    if manifest.metadata_checksum:
        return manifest
    engine = make_engine(settings)
    try:
        with engine.connect() as conn:
            return add_metadata_table(directory, conn)
    finally:
        engine.dispose()


SIDE_BY_SIDE = (
    ("today's path: Annoy + SQL metadata", {"LOOKALIKE_SERVE_NEIGHBOUR_LISTS": "false"}),
    ("lists + SQL metadata", {"LOOKALIKE_SERVE_NEIGHBOUR_LISTS": "true", "LOOKALIKE_SERVE_METADATA_TABLE": "false"}),
    ("lists + metadata table + live set", {"LOOKALIKE_SERVE_NEIGHBOUR_LISTS": "true",
                                           "LOOKALIKE_SERVE_METADATA_TABLE": "true"}),
)


# ----------------------------------------------------------------------------- parts
def annoy_alone(home: Path, ids: list[int], search_k: int) -> tuple[list[float], list[float]]:
    """(vector + query ms, query-only ms) per id, in this process, like the server's call."""
    index = VectorIndex.load(home / "artifacts" / "indexes" / "i-bench")
    n = first_fetch(K, Filters(), Exclusions(item_id=1))
    effective = max(search_k, n * index.manifest.n_trees)
    both, query_only = [], []
    for image_id in ids:
        t0 = time.perf_counter()
        v = index.vector(image_id)
        t1 = time.perf_counter()
        index.query(v, n, search_k=effective)
        t2 = time.perf_counter()
        both.append((t2 - t0) * 1000)
        query_only.append((t2 - t1) * 1000)
    index.close()
    return both, query_only


def query_photo() -> bytes:
    photos = sorted(Path("/work/shared/data/clothing-small/test").glob("*/*.jpg"))
    if photos:
        return photos[0].read_bytes()
    y, x = np.mgrid[0:400, 0:400]
    pixels = np.stack([x % 256, y % 256, (x + y) % 256], axis=-1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def multipart(photo: bytes) -> tuple[bytes, dict[str, str]]:
    boundary = "benchboundary7d2f"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"q.jpg\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + photo + (
            f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"k\"\r\n\r\n{K}\r\n--{boundary}--\r\n"
            ).encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def similar_by_id(port: int, workers: list[int], sample: list[int], n: int, args: argparse.Namespace,
                  annoy: tuple[list[float], list[float]] | None) -> list[float]:
    """Sequential similar-by-id requests, split by phase, then the load runs; the index phase ms."""
    sequential(port, [f"/api/v1/items/b{i:07d}/similar?k={K}" for i in sample[:200]])  # warm-up
    cpu0 = cpu_seconds(workers)
    client, phases = sequential(port, [f"/api/v1/items/b{i:07d}/similar?k={K}" for i in sample])
    sequential_cpu_ms = (cpu_seconds(workers) - cpu0) * 1000 / len(sample)
    index_ms = [p.get("index", 0.0) for p in phases]
    meta_ms = [p.get("meta", 0.0) for p in phases]
    ser_ms = [p.get("ser", 0.0) for p in phases]
    app_ms = [p.get("app", 0.0) for p in phases]
    print(f"### Similar-by-id, sequential ({args.requests} requests, one keep-alive connection, k={K})\n")
    print("| part | p50 ms | p99 ms | goal |\n|---|---|---|---|")
    if annoy is not None:
        print(phase_row("Annoy alone in the bench process: vector(id) + query", annoy[0]))
        print(phase_row("Annoy alone: query only", annoy[1]))
    print(phase_row("index query in the server (`index`)", index_ms))
    print(phase_row("item lookup, marks, metadata (`meta`)", meta_ms))
    print(phase_row("serialisation (`ser`)", ser_ms))
    print(phase_row("framework inside Flask (app - index - meta - ser)",
                    [a - i - m - s for a, i, m, s in zip(app_ms, index_ms, meta_ms, ser_ms)]))
    print(phase_row("HTTP + gunicorn + client (client - app)", [c - a for c, a in zip(client, app_ms)]))
    print(phase_row("**everything outside the index query** (client - index)",
                    [c - i for c, i in zip(client, index_ms)], "≤ 2 ms at p50"))
    print(phase_row("**total, client side**", client, "p99 ≤ 20 ms"))
    print(f"\nserver CPU (both workers, user + system): {sequential_cpu_ms:.2f} ms per request; "
          f"load average {os.getloadavg()[0]:.1f}")

    load = wrk_run if shutil.which("wrk") else python_load
    print(f"\n### Similar-by-id under load (gunicorn 2 workers x 4 threads, {args.seconds} s each)\n")
    print("| tool | connections | requests/s | p50 ms | p99 ms | errors | server CPU ms/request | "
          "req/s if the server had both cores | load avg |\n|---|---|---|---|---|---|---|---|---|")
    for c in args.concurrency:
        cpu0 = cpu_seconds(workers)
        r = load(port, n, c, args.seconds)
        cpu_ms = (cpu_seconds(workers) - cpu0) * 1000 / max(1.0, r["rps"] * args.seconds)
        print(f"| {r['tool']} | {c} | {r['rps']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['errors']} | "
              f"{cpu_ms:.2f} | {2000 / cpu_ms:.0f} | {os.getloadavg()[0]:.1f} |")

    return index_ms


def print_memory(workers: list[int], index_file: Path) -> None:
    print(f"\n### Memory per API worker (index file {index_file.stat().st_size / 2**20:.0f} MB; "
          "/proc/<pid>/smaps_rollup, MB)\n")
    print("| worker | RSS | PSS | shared clean | shared dirty | private clean | private dirty | "
          "index file resident (shared / private) | goal |\n|---|---|---|---|---|---|---|---|---|")
    for pid in workers:
        m = memory_of(pid, index_file)
        print(f"| {pid} | {m['Rss']:.0f} | {m['Pss']:.0f} | {m['Shared_Clean']:.0f} | {m['Shared_Dirty']:.0f} | "
              f"{m['Private_Clean']:.0f} | {m['Private_Dirty']:.0f} | {m['index_Rss']:.0f} "
              f"({m['index_Shared_Clean']:.0f} / {m['index_Private_Clean']:.0f}) | private ≤ 250 |")


def phase_row(name: str, values: list[float], goal: str = "") -> str:
    return f"| {name} | {pct(values, 50):.3f} | {pct(values, 99):.3f} | {goal} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="200,000 items instead of 1,000,000")
    parser.add_argument("--items", type=int, default=None)
    parser.add_argument("--home", type=Path, default=None, help="dataset cache (default /tmp/lookalike-bench-api-N)")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--lists", action="store_true",
                        help="add neighbour lists; compare the Annoy path and the lists path side by side")
    parser.add_argument("--modes", type=int, nargs="+", default=None,
                        help="with --lists: only these of the side-by-side modes (0 today, 1 lists, 2 lists+table)")
    parser.add_argument("--prepare", action="store_true",
                        help="build the dataset (with --lists: lists and table) and stop")
    parser.add_argument("--neighbour-exact-limit", type=int, default=None,
                        help="lists by exact search up to this many images (default: the setting's, 200000)")
    parser.add_argument("--neighbour-search-k", type=int, default=None,
                        help="Annoy search_k of lists above the exact limit (default: the setting's, 100000)")
    parser.add_argument("--search-k", type=int, default=None,
                        help="serve with this LOOKALIKE_ANNOY_SEARCH_K (default: the setting's default, 10000)")
    args = parser.parse_args()
    n = args.items or (200_000 if args.quick else 1_000_000)
    home = args.home or Path(tempfile.gettempdir()) / f"lookalike-bench-api-{n}"
    settings = Settings(home=home)
    if args.search_k is not None:
        settings = settings.replace(annoy_search_k=args.search_k)
    if args.neighbour_exact_limit is not None:
        settings = settings.replace(neighbour_exact_limit=args.neighbour_exact_limit)
    if args.neighbour_search_k is not None:
        settings = settings.replace(neighbour_search_k=args.neighbour_search_k)
    info = build_dataset(home, n)
    print(f"dataset: {n:,} items/images, 128-d synthetic vectors; SQL insert {info['sql_seconds']} s, "
          f"index build {info['build_seconds']} s, index file {info['index_mb']} MB "
          f"({settings.annoy_trees} trees, search_k {settings.annoy_search_k})\n")

    if args.prepare:
        if args.lists:
            ensure_lists(home, settings)
            ensure_table(home, settings)
        return
    rng = np.random.default_rng(1)
    sample = [int(i) for i in rng.integers(0, n, args.requests)]
    env = {"LOOKALIKE_ANNOY_SEARCH_K": str(settings.annoy_search_k)}
    index_file = (home / "artifacts" / "indexes" / "i-bench" / "index.ann").resolve()
    if args.lists:
        lists = ensure_lists(home, settings)
        print(f"neighbour lists: K={lists.neighbours_k} ({lists.neighbours_method}), computed in "
              f"{lists.neighbours_seconds:.1f} s, recall@10 {lists.neighbours_recall:.4f}")
        table = ensure_table(home, settings)
        table_mb = (index_file.parent / "metadata.bin").stat().st_size / 2**20
        print(f"metadata table: {table_mb:.1f} MB, written in {table.metadata_seconds:.1f} s\n")
        for number, (name, serve) in enumerate(SIDE_BY_SIDE):
            if args.modes and number not in args.modes:
                continue
            print(f"## {name} ({', '.join(f'{k}={v}' for k, v in serve.items())})\n")
            proc, port = start_server(home, 2, home / f"server-mode-{number}.log", {**env, **serve})
            try:
                workers = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
                similar_by_id(port, workers, sample, n, args, None)
                print_memory(workers, index_file)
                print()
            finally:
                stop_server(proc)
        return
    log = home / "server.log"
    proc, port = start_server(home, 2, log, env)
    try:
        workers = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
        annoy_both, annoy_query = annoy_alone(home, [i + 1 for i in sample], settings.annoy_search_k)
        index_ms = similar_by_id(port, workers, sample, n, args, (annoy_both, annoy_query))

        body, headers = multipart(query_photo())
        client_img, phases_img = sequential(port, ["/api/v1/search"] * 60, "POST", body, headers)
        print(f"\n### Search by uploaded image (60 sequential uploads of a {len(body) // 1024} KB JPEG; "
              f"model: small CNN 64 px, 128-d, CPU, 1 torch thread)\n")
        print("| part | p50 ms | p99 ms | goal |\n|---|---|---|---|")
        for name, key in (("decode", "decode"), ("embed", "embed"), ("search (index)", "index"),
                          ("metadata", "meta"), ("serialisation", "ser"), ("app total", "app")):
            print(phase_row(name, [p.get(key, 0.0) for p in phases_img[10:]]))
        print(phase_row("total, client side", client_img[10:]))

        print_memory(workers, index_file)
        print(f"\nserver log: {log}; median similar-by-id index phase {statistics.median(index_ms):.3f} ms")
    finally:
        stop_server(proc)


if __name__ == "__main__":
    main()
