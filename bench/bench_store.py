"""The object store (issue 11): reindex over hosts, API start and hot swap, cache behaviour.

Everything runs on this machine against a real SeaweedFS on loopback (started like the
tests' fixture), PostgreSQL and Redis; each "host" is its own home and cache and shares
nothing on disk with the others. Three parts, side by side in one run:

1. **Reindex** of N Fashion-MNIST images (default all 70,000; ``--quick`` 10,000), a forced
   rebuild (every image re-embedded), four ways: one worker process vs two, with the
   local artifacts directory (both processes on one home) vs the object store (each
   worker its own host with a cold cache: it fetches every image it embeds from the
   store, and the index is uploaded before it is published). The media are imported
   once into the local directory and copied to the store (not timed); both modes
   then read the same database rows. Goals: 2 workers >= 1.6x one; store <= 15 % slower.
2. **API from the store**: bench_api's synthetic catalog (1M x 128-d vectors; ``--quick``
   100k, built once and kept in ``--api-home``). Host A holds the index and publishes it;
   ``lookalike serve`` (gunicorn, 2 workers) starts on host A from its local directory
   and on host B from the store with a cold cache (then once more, warm); similar-by-id
   p50/p99 sequentially and under load on both. Then a hot swap: host A publishes a second
   version (the same files under a new version name: a rebuild would cost minutes and
   measure nothing of the store), timed until every answer of B names the new version.
3. **Cache**: with B serving the new version, the bench fills B's cache past its bound with
   other objects; the served files must all stay (same inodes), the old version's may go.
   Then a cold host C: four processes (as a host's server workers) fetch the version at
   once through one cache, each counting its downloads per key (tests/support/store_counts.py):
   every file must be downloaded exactly once.

    PYTHONPATH=. MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736 \
        python bench/bench_store.py [--quick] [--only reindex|api]
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from alembic import command
from api_harness import cpu_seconds, pct, python_load, sequential, start_server, stop_server, wrk_run
from bench_api import K, build_dataset
from reindex_harness import timed_reindex
from sqlalchemy import delete, select, update

from core.artifacts import ArtifactStore, LocalStore, open_cache, open_store, read_directory
from core.catalog.sample import Split
from core.config import LogLevel, Settings
from core.db import IndexStatus, IndexVersion, make_engine, make_session_factory, session_scope
from core.embedding import ModelSpec
from core.index_store import share_index_version, version_prefix
from core.media import MEDIA_PREFIX
from core.publish import publish_index
from core.registry import activate_model, share_checkpoint
from migrations import alembic_config
from tests.support.processes import cached_media
from tests.support.servers import ObjectStoreServer, PostgresServer, RedisServer
from tests.support.store_counts import counted_cold_fill
from tests.worker.support import WorkerProcess, analyze, import_fmnist
from trainer.register import register_untrained
from worker.celery_app import CeleryTaskSender, make_celery

STAGES = ("embed", "build", "verify", "publish")
V1, V2 = "i-bench", "i-bench-2"


def store_fields(weed: ObjectStoreServer, prefix: str) -> dict:
    """The settings that put a host on the bench's SeaweedFS, under ``prefix``."""
    return {"artifact_store": f"s3://{weed.bucket}/{prefix}", "s3_endpoint_url": weed.endpoint_url,
            "s3_region": "us-east-1", "s3_access_key_id": "test", "s3_secret_access_key": "test"}


def machine() -> str:
    return f"{os.cpu_count()} CPUs, load average {' / '.join(f'{x:.1f}' for x in os.getloadavg())}"


# ----------------------------------------------------------------------------- 1. reindex
def seed_store(local_root: Path, store: ArtifactStore, prefix: str) -> tuple[int, float]:
    """Copy every key under ``prefix`` from a local artifacts folder to ``store``; (keys, seconds)."""
    source = LocalStore(local_root)
    keys = list(source.list_keys(prefix))
    started = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:  # one PUT per image: threads hide the round trips
        list(pool.map(lambda k: store.put_file(k, source.local_path(k)), keys))
    return len(keys), time.perf_counter() - started


def reindex_rows(args: argparse.Namespace, root: Path, pg: PostgresServer, rd: RedisServer,
                 weed: ObjectStoreServer) -> list[dict]:
    n = args.images
    url = pg.create_database(f"store{n}")
    command.upgrade(alembic_config(url), "head")
    local = Settings(home=root / "host-0", database_url=url, broker_url=rd.url, torch_threads=1,
                     fresh_rebuild_threshold=10**9, log_level=LogLevel.INFO)
    shared = store_fields(weed, f"reindex-{n}")
    engine = make_engine(local)
    sessions = make_session_factory(engine)
    # The checkpoint goes to host-0's models folder and to the store (the store hosts could
    # read host-0's copy by its absolute path: one 1 MB file, read once per process).
    activate_model(sessions, register_untrained(sessions, local.replace(**shared), ModelSpec(), version="m-store"))
    started = time.perf_counter()
    import_fmnist(local, sessions, n, split=Split.ALL)
    analyze(engine)
    keys, seconds = seed_store(local.resolved_artifacts_dir, open_store(local.replace(**shared)), MEDIA_PREFIX)
    print(f"imported {n:,} items in {time.perf_counter() - started - seconds:.0f}s; copied {keys:,} images to "
          f"the store in {seconds:.0f}s ({keys / seconds:,.0f} PUT/s, 8 threads)", file=sys.stderr)
    app = make_celery(local)
    sender = CeleryTaskSender(app)
    rows = []
    try:
        for rnd in range(args.rounds):
            for workers in (1, 2):
                for mode in ("local", "store"):  # interleaved: the machine's load drifts
                    if mode == "local":  # the local directory cannot be split: both processes on host-0
                        hosts, submitter = [local] * workers, local
                    else:  # fresh homes: each worker host starts with a cold cache
                        hosts = [local.replace(home=root / f"r{rnd}-w{workers}-host-{h}", **shared)
                                 for h in range(workers)]
                        submitter = local.replace(**shared)
                    procs = [WorkerProcess(h, root / f"{mode}-{rnd}-{workers}-{i}.log") for i, h in enumerate(hosts)]
                    weed_cpu = cpu_seconds([weed.process.pid])
                    row = timed_reindex(submitter, sessions, sender, procs)
                    row["store_cpu"] = cpu_seconds([weed.process.pid]) - weed_cpu  # SeaweedFS, same 2 cores
                    fetched = [len(cached_media(h)) for h in hosts] if mode == "store" else []
                    rows.append({"mode": mode, "workers": workers, "round": rnd, "fetched": fetched, **row})
                    print(f"{mode} x{workers}: {row['wall']:.1f}s, fetched {fetched}; {machine()}", file=sys.stderr)
    finally:
        app.close()
        engine.dispose()
    return rows


def print_reindex(rows: list[dict], n: int, trees: int) -> None:
    print(f"\n## 1. Reindex from scratch, {n:,} Fashion-MNIST images (small CNN 64 px -> 128-d, {trees} trees, "
          f"torch 1 thread per worker process); {machine()}\n")
    print("| round | artifacts | worker processes | embed s | build s | verify s | publish s | wall s | images/s "
          "| images fetched from the store, per host | SeaweedFS CPU s |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    for r in rows:
        where = "object store, 1 host each" if r["mode"] == "store" else "local directory, 1 host"
        print(f"| {r['round'] + 1} | {where} | {r['workers']} | " + " | ".join(f"{r[s]:.2f}" for s in STAGES)
              + f" | {r['wall']:.1f} | {n / r['wall']:,.0f} | "
              + (" + ".join(f"{f:,}" for f in r["fetched"]) or "-") + f" | {r['store_cpu']:.1f} |")
    wall = {(m, w): statistics.median(r["wall"] for r in rows if (r["mode"], r["workers"]) == (m, w))
            for m in ("local", "store") for w in (1, 2)}
    print("\n| worker processes | local wall s | store wall s | store costs | goal |")
    print("|---:|---:|---:|---:|---|")
    for w in (1, 2):
        cost = wall["store", w] / wall["local", w] - 1
        print(f"| {w} | {wall['local', w]:.1f} | {wall['store', w]:.1f} | {cost:+.1%} | <= +15 % "
              f"{'met' if cost <= 0.15 else '**not met**'} |")
    print("\n| artifacts | scaling 1 -> 2 worker processes (wall) | goal |")
    print("|---|---:|---|")
    for m in ("local", "store"):
        ratio = wall[m, 1] / wall[m, 2]
        print(f"| {m} | {ratio:.2f}x | >= 1.6x {'met' if ratio >= 1.6 else '**not met**'} "
              f"({os.cpu_count()} CPUs shared with PostgreSQL, Redis, SeaweedFS and other jobs) |")


# ----------------------------------------------------------------------------- 2. API
def reset_versions(sessions, home: Path) -> None:  # type: ignore[no-untyped-def]
    """Back to the dataset as built: only V1, active (an earlier run left V2 behind)."""
    with session_scope(sessions) as s:
        s.execute(delete(IndexVersion).where(IndexVersion.version != V1))
        s.execute(update(IndexVersion).where(IndexVersion.version == V1).values(status=IndexStatus.ACTIVE))
    shutil.rmtree(home / "artifacts" / "indexes" / V2, ignore_errors=True)


def second_version(sessions, home: Path) -> None:  # type: ignore[no-untyped-def]
    """V2: V1's files hard-linked under a new name (its manifest names V2), registered READY."""
    source, dest = home / "artifacts" / "indexes" / V1, home / "artifacts" / "indexes" / V2
    dest.mkdir()
    for f in source.iterdir():
        if f.name == "manifest.json":
            manifest = json.loads(f.read_text())
            (dest / f.name).write_text(json.dumps({**manifest, "index_version": V2}))
        else:
            os.link(f, dest / f.name)
    with session_scope(sessions) as s:
        v1 = s.scalar(select(IndexVersion).where(IndexVersion.version == V1))
        s.add(IndexVersion(version=V2, model_id=v1.model_id, path=str(dest), item_count=v1.item_count,
                           image_count=v1.image_count, status=IndexStatus.READY, n_trees=v1.n_trees,
                           build_seconds=v1.build_seconds, max_embedding_created_at=v1.max_embedding_created_at))


def served_version(port: int) -> str | None:
    """The index version of one similar-by-id answer, on a new connection (any gunicorn worker)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", f"/api/v1/items/b0000000/similar?k={K}")
        response = conn.getresponse()
        body = response.read()
        return json.loads(body)["index_version"] if response.status == 200 else None
    except OSError:  # counted as a failed request by the caller
        return None
    finally:
        conn.close()


def serve(home: Path, settings: Settings, log: Path) -> tuple[object, int, float, float]:
    """Start ``lookalike serve`` for ``settings``; (process, port, seconds to ready, index load s in the log)."""
    started = time.perf_counter()
    proc, port = start_server(home, 2, log, settings.to_env())
    ready = time.perf_counter() - started
    loads = [float(s) for s in re.findall(r"loaded index \S+ .* in ([0-9.]+)s", log.read_text())]
    return proc, port, ready, max(loads, default=float("nan"))


def latency(port: int, n: int, args: argparse.Namespace) -> dict:
    rng = np.random.default_rng(1)
    paths = [f"/api/v1/items/b{int(i):07d}/similar?k={K}" for i in rng.integers(0, n, args.requests)]
    sequential(port, paths[:200])  # warm-up
    client, _ = sequential(port, paths)
    load = (wrk_run if shutil.which("wrk") else python_load)(port, n, args.connections, args.seconds)
    return {"p50": pct(client, 50), "p99": pct(client, 99), **{f"load_{k}": v for k, v in load.items()}}


def api_and_cache(args: argparse.Namespace, root: Path, rd: RedisServer, weed: ObjectStoreServer) -> None:
    n = args.vectors
    home_a = args.api_home or Path(tempfile.gettempdir()) / f"lookalike-bench-store-api-{n}"
    info = build_dataset(home_a, n)
    base = Settings(home=home_a, torch_threads=1, log_level=LogLevel.INFO)
    engine = make_engine(base)
    sessions = make_session_factory(engine)
    reset_versions(sessions, home_a)
    host_a = base.replace(broker_url=rd.url, **store_fields(weed, f"api-{n}"))
    v1_dir = home_a / "artifacts" / "indexes" / V1
    size = sum(f.stat().st_size for f in v1_dir.iterdir())
    bound = int(size * 1.5)  # room for one version and a half: a swap overfills it until the old one goes
    host_b = host_a.replace(home=root / "host-b", database_url=base.resolved_database_url, cache_max_bytes=bound)
    share_checkpoint(host_a, "m-bench", home_a / "artifacts" / "models" / "m-bench.pt")
    t0 = time.perf_counter()
    with session_scope(sessions) as s:
        share_index_version(host_a, s.scalar(select(IndexVersion).where(IndexVersion.version == V1)))
    upload_v1 = time.perf_counter() - t0
    print(f"\n## 2. API from the object store: {n:,} x 128-d index, {size / 2**20:,.0f} MiB per version "
          f"(dataset: {info}); gunicorn 2 workers; {machine()}\n\nhost A uploads {V1}: {upload_v1:.1f} s\n")

    rows = []
    proc, port, ready, load_s = serve(home_a, base, root / "serve-a.log")
    try:
        rows.append(("host A, local directory", ready, load_s, latency(port, n, args)))
    finally:
        stop_server(proc)
    proc, port, ready, load_s = serve(host_b.home, host_b, root / "serve-b-cold.log")
    stop_server(proc)
    cold = ("host B, object store, cold cache (downloads the version)", ready, load_s)
    proc, port, ready, load_s = serve(host_b.home, host_b, root / "serve-b.log")
    try:
        assert served_version(port) == V1
        rows.append((*cold, None))
        rows.append(("host B, object store, warm cache (restart)", ready, load_s, latency(port, n, args)))
        swap = hot_swap(sessions, home_a, host_a, port)
        rows.append(("host B after the hot swap (new version, cached)", float("nan"), float("nan"),
                     latency(port, n, args)))
        print_api(rows, swap, args)
        cache_behaviour(host_b, port, weed, root)
    finally:
        stop_server(proc)
        engine.dispose()


def hot_swap(sessions, home_a: Path, host_a: Settings, port: int) -> dict:  # type: ignore[no-untyped-def]
    """Publish V2 on host A (upload, then activate + notify); poll B until 20 answers in a row name V2."""
    second_version(sessions, home_a)
    t0 = time.perf_counter()
    publish_index(host_a, sessions, V2)
    published = time.perf_counter()
    first, streak, failed, asked = None, 0, 0, 0
    while streak < 20:
        version = served_version(port)
        asked += 1
        failed += version is None
        if version == V2:
            first = first or time.perf_counter()
            streak += 1
        else:
            streak = 0
        if time.perf_counter() - published > 600:
            raise TimeoutError(f"host B still serves {version} 10 min after the publish")
    return {"upload_and_publish": published - t0, "first": first - published,
            "all": time.perf_counter() - published, "requests": asked, "failed": failed}


def print_api(rows: list, swap: dict, args: argparse.Namespace) -> None:
    print("| server | start to /readyz s | index load in the worker s (log) | sequential p50 ms | p99 ms "
          f"| {args.connections} connections: req/s | p50 ms | p99 ms | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, ready, load_s, lat in rows:
        measured = (f"{lat['p50']:.2f} | {lat['p99']:.2f} | {lat['load_rps']:,.0f} | {lat['load_p50']:.2f} | "
                    f"{lat['load_p99']:.2f} | {lat['load_errors']}") if lat else "- | - | - | - | - | -"
        print(f"| {name} | {ready:.1f} | {load_s:.2f} | {measured} |")
    print(f"\nhot swap: host A uploads {V2} and publishes it in {swap['upload_and_publish']:.1f} s; host B answers "
          f"with {V2} {swap['first']:.1f} s after the publish, every answer (20 in a row, new connections) after "
          f"{swap['all']:.1f} s; {swap['failed']} of {swap['requests']} requests failed meanwhile "
          f"(sequential; load: {args.connections} connections, {args.seconds} s, "
          f"{'wrk' if shutil.which('wrk') else 'python threads'})")


# ----------------------------------------------------------------------------- 3. cache
def cache_behaviour(host_b: Settings, port: int, weed: ObjectStoreServer, root: Path) -> None:
    """While B serves V2: fill its cache past the bound (V2 stays); then count a cold host's downloads."""
    cache = open_cache(host_b)
    v1, v2 = (read_directory(cache.store, version_prefix(v)) for v in (V1, V2))
    served = {k: (cache.objects / k).stat().st_ino for k in map(v2.key, v2.files)}
    before, keys_before = cache.size(), set(cache.keys())
    filler = root / "filler.bin"
    piece = max(1, cache.max_bytes // 6)
    filler.write_bytes(np.random.default_rng(0).bytes(piece))
    started = time.perf_counter()
    for i in range(8):  # 8/6 of the bound in other objects, each read once and released
        key = f"bench/filler-{i}.bin"
        cache.store.put_file(key, filler)
        with cache.path(key):
            pass
    cache.evict()  # the fill checked the bound as it went (every 1 % of it added); once more at the end
    fill_s = time.perf_counter() - started
    left = set(cache.keys())
    gone = Counter(k.split("/")[1] if k.startswith("indexes/") else "filler" for k in
                   (keys_before | {f"bench/filler-{i}.bin" for i in range(8)}) - left)
    stayed = {k: (cache.objects / k).stat().st_ino if (cache.objects / k).exists() else None for k in served}
    v1_left = sum((cache.objects / k).exists() for k in map(v1.key, v1.files))
    answers = [served_version(port) for _ in range(50)]
    print(f"\n## 3. Cache behaviour; {machine()}\n")
    print(f"Eviction: host B's cache bound {cache.max_bytes / 2**20:,.0f} MiB, holding {before / 2**20:,.0f} MiB "
          f"after the swap ({V1} and the served {V2}); the bench then read 8 objects of {piece / 2**20:,.0f} MiB "
          f"through it in {fill_s:.1f} s. Now {cache.size() / 2**20:,.0f} MiB; evicted: {dict(gone)}; "
          f"{V2} (served): {sum(v is not None for v in stayed.values())} of {len(served)} files kept, same inodes: "
          f"{stayed == served}; {V1} (no longer served): {v1_left} of {len(v1.files)} files left; "
          f"B's next 50 answers: {Counter(answers)}.")
    assert stayed == served, "a file of the served version was evicted"
    assert answers == [V2] * 50
    cold_start_downloads(host_b, weed, v2, root)


def cold_start_downloads(host_b: Settings, weed: ObjectStoreServer, v2, root: Path) -> None:  # type: ignore[no-untyped-def]
    bucket, prefix = host_b.artifact_store[len("s3://"):].split("/", 1)
    args = (weed.endpoint_url, bucket, prefix + "/", version_prefix(V2), str(root / "host-c-cache"),
            host_b.cache_max_bytes)
    started = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        counts = pool.map(counted_cold_fill, [args] * 4)
    seconds = time.perf_counter() - started
    total = sum((Counter(c) for c in counts), Counter())
    size = sum(e.size for e in v2.files.values())
    print(f"\nCold start of host C: 4 processes fetch {V2} at once through one cache in {seconds:.1f} s "
          f"(with the processes' start): downloads per process {[sum(c.values()) for c in counts]}, "
          f"per file {dict(sorted(total.items()))}; {len(v2.files)} files, {size / 2**20:,.0f} MiB, each "
          f"downloaded {'exactly once' if total == {v2.key(f): 1 for f in v2.files} else '**not once**'}.")
    assert total == {v2.key(f): 1 for f in v2.files}


# ----------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10,000 images and a 100,000-vector index")
    parser.add_argument("--images", type=int, default=None, help="reindex catalog size (default 70,000)")
    parser.add_argument("--vectors", type=int, default=None, help="API index size (default 1,000,000)")
    parser.add_argument("--rounds", type=int, default=1, help="reindex rounds (the table reports medians)")
    parser.add_argument("--only", choices=("reindex", "api"), default=None)
    parser.add_argument("--api-home", type=Path, default=None,
                        help="dataset cache of part 2 (default /tmp/lookalike-bench-store-api-N)")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()
    args.images = args.images or (10_000 if args.quick else 70_000)
    args.vectors = args.vectors or (100_000 if args.quick else 1_000_000)
    root = Path(tempfile.mkdtemp(prefix="bench-store-"))
    pg, rd, weed = PostgresServer.start(), RedisServer.start(), ObjectStoreServer.start()
    started = time.perf_counter()
    try:
        if args.only in (None, "reindex"):
            print_reindex(reindex_rows(args, root, pg, rd, weed), args.images, Settings().annoy_trees)
        if args.only in (None, "api"):
            api_and_cache(args, root, rd, weed)
    finally:
        weed.close()
        rd.close()
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)
    print(f"\n(bench_store: {time.perf_counter() - started:.0f} s in all; {machine()})")


if __name__ == "__main__":
    main()
