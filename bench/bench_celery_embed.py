"""Embedding throughput through Celery vs calling the embedder directly in one process.

Starts a throwaway PostgreSQL and Redis on loopback, imports Fashion-MNIST items,
registers an untrained small CNN (the default spec: 64 px, 128-d), then embeds the
same images three ways, side by side in one run:

- direct: one process loads the images from the media store and calls
  ``Embedder.embed`` in chunks of EMBED_CHUNK_SIZE (no database, no queue);
- celery x1: EMBED_IMAGES sent to one worker process (chunks fanned out as tasks,
  vectors written to PostgreSQL, progress to the jobs table), timed from the send
  to the job's completion;
- celery x2: the same with two worker processes.

An index over the catalog is built first (in this process), so that finishing
an embedding does not request the first build; each worker then embeds a warm-up
batch, so its one-time model load is not counted (it happens once per process,
not per image), and Redis is flushed between runs. torch uses one thread per
process everywhere, so "x2" measures process-level scaling. The goal is Celery x1
>= 85 % of direct.

    PYTHONPATH=. MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736 \
        /tmp/scratchvenv/bin/python bench/bench_celery_embed.py [--quick]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import redis
import torch
from alembic import command
from sqlalchemy import delete, select

from core.config import LogLevel, Settings
from core.db import Embedding, ItemImage, JobKind, JobStatus, make_engine, make_session_factory, session_scope
from core.embedding import Embedder, ModelSpec
from core.jobs import create_job
from core.media import MediaStore
from core.registry import get_model
from core.reindex_requests import submit_reindex
from core.task_names import TaskName
from migrations import alembic_config
from tests.support.servers import PostgresServer, RedisServer
from tests.worker.support import WorkerProcess, analyze, import_fmnist, register_tiny_model, wait_for_job
from worker.celery_app import CeleryTaskSender, make_celery
from worker.flows.embed import EMBED_CHUNK_SIZE, chunked
from worker.local import InProcessDispatcher


def direct(settings: Settings, sessions, model_version: str, ids: list[int]) -> float:  # type: ignore[no-untyped-def]
    """Seconds to load and embed ``ids`` in this process, chunk by chunk."""
    torch.set_num_threads(1)
    model = get_model(sessions, model_version)
    embedder = Embedder.from_checkpoint(Path(model.checkpoint_path), device=torch.device("cpu"),
                                        batch_size=settings.embed_batch_size)
    media = MediaStore.from_settings(settings)
    with session_scope(sessions) as s:
        keys = dict(s.execute(select(ItemImage.id, ItemImage.media_key)).all())
    embedder.embed([media.open(keys[i]) for i in ids[:64]])  # warm-up
    started = time.perf_counter()
    for chunk in chunked(ids, EMBED_CHUNK_SIZE):
        embedder.embed([media.open(keys[i]) for i in chunk])
    return time.perf_counter() - started


def through_celery(settings: Settings, sessions, sender: CeleryTaskSender, ids: list[int],  # type: ignore[no-untyped-def]
                   workers: int, log: Path) -> float:
    """Seconds from sending EMBED_IMAGES for ``ids`` to its job's completion."""
    client = redis.Redis.from_url(settings.broker_url)
    client.flushdb()
    client.close()
    with session_scope(sessions) as s:
        s.execute(delete(Embedding))
    worker = WorkerProcess(settings, log, concurrency=workers)
    worker.start()
    try:
        # One chunk per process, so that each loads the model before the clock starts.
        warm = create_job(sessions, JobKind.EMBED)
        sender.send(TaskName.EMBED_IMAGES, image_ids=ids[:EMBED_CHUNK_SIZE * workers], job_id=warm)
        wait_for_job(sessions, warm, timeout=300)
        with session_scope(sessions) as s:
            s.execute(delete(Embedding))
        job_id = create_job(sessions, JobKind.EMBED)
        started = time.perf_counter()
        sender.send(TaskName.EMBED_IMAGES, image_ids=ids, job_id=job_id)
        sent = time.perf_counter()
        job = wait_for_job(sessions, job_id, timeout=3600)
        seconds = time.perf_counter() - started
        assert job.status is JobStatus.SUCCEEDED, job.error
        in_worker = (job.finished_at - job.started_at).total_seconds()
        print(f"celery x{workers}: send {sent - started:.2f}s, job started->finished {in_worker:.2f}s, "
              f"seen done after {seconds:.2f}s", file=sys.stderr)
    finally:
        worker.stop()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 images instead of 10,000")
    parser.add_argument("--images", type=int, default=None)
    args = parser.parse_args()
    n = args.images or (2000 if args.quick else 10_000)

    root = Path(tempfile.mkdtemp(prefix="bench-celery-embed-"))
    pg, rd = PostgresServer.start(), RedisServer.start()
    try:
        url = pg.create_database("bench")
        command.upgrade(alembic_config(url), "head")
        settings = Settings(home=root / "home", database_url=url, broker_url=rd.url, torch_threads=1,
                            fresh_rebuild_threshold=10**9, log_level=LogLevel.INFO)
        engine = make_engine(settings)
        sessions = make_session_factory(engine)
        version = register_tiny_model(settings, sessions, spec=ModelSpec(), version="m-bench")
        ids = import_fmnist(settings, sessions, n)
        analyze(engine)  # table statistics, as autovacuum keeps them on a live database
        local = InProcessDispatcher(settings.replace(broker_url=""))
        submit_reindex(local.runtime.settings, sessions, local)
        local.close()
        app = make_celery(settings)
        sender = CeleryTaskSender(app)

        rows = []
        d1 = direct(settings, sessions, version, ids)
        c1 = through_celery(settings, sessions, sender, ids, 1, root / "worker1.log")
        c2 = through_celery(settings, sessions, sender, ids, 2, root / "worker2.log")
        d2 = direct(settings, sessions, version, ids)  # again: the machine's load drifts
        base = (d1 + d2) / 2
        rows.append(("direct (1 process, load + embed)", base, 1.0))
        rows.append(("celery, 1 worker process", c1, base / c1))
        rows.append(("celery, 2 worker processes", c2, base / c2))
        print(f"\n{n:,} Fashion-MNIST images, small CNN 64 px -> 128-d, torch 1 thread/process, "
              f"chunks of {EMBED_CHUNK_SIZE}; direct runs {d1:.1f}s / {d2:.1f}s\n")
        print("| path | seconds | images/s | vs direct |")
        print("|---|---:|---:|---:|")
        for name, seconds, ratio in rows:
            print(f"| {name} | {seconds:.1f} | {n / seconds:,.0f} | {ratio:.0%} |")
        app.close()
        engine.dispose()
    finally:
        rd.close()
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
