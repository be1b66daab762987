"""The query log's write, and the shadow replay's search, timed.

1. ``core.query_log.log_query`` (one insert and the bounding range delete, its own
   transaction): what one sampled similar-by-id request adds, after its response is sent.
   On a migrated SQLite file, the log first filled to its bound so every write also
   deletes a row, as in steady state.
2. The replay's exact item search (worker/flows/shadow.py, ``_Ranker``) of ``--queries``
   items over a catalog of ``--items`` random 128-d vectors (one photo per item), for one
   model: a retrain's shadow check runs it twice (challenger, active model).

    PYTHONPATH=. python bench/bench_query_log.py [--writes 2000] [--max-rows 100000]
                                                 [--items 70000] [--queries 500]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from alembic import command
from sqlalchemy import insert

from core.config import Settings
from core.db import QueryLog, make_engine, make_session_factory
from core.db.types import utcnow
from core.embeddings_store import VectorSnapshot
from core.index import Metric
from core.query_log import log_query
from migrations import alembic_config
from worker.flows.shadow import _Ranker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=2000)
    parser.add_argument("--max-rows", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=70_000)
    parser.add_argument("--queries", type=int, default=500)
    args = parser.parse_args()
    _writes(args)
    _replay(args)


def _replay(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(0)
    ids = np.arange(1, args.items + 1, dtype=np.int64)
    snapshot = VectorSnapshot(ids, ids, rng.normal(size=(args.items, 128)).astype(np.float32), None)
    started = time.perf_counter()
    ranker = _Ranker(snapshot, {int(i): f"sku-{i}" for i in ids}, Metric.EUCLIDEAN)
    prepared = time.perf_counter() - started
    started = time.perf_counter()
    for distances in ranker.distances_of(ranker.items[:args.queries]):
        ranker.top(distances, 10)
    took = time.perf_counter() - started
    print(f"replay search, one model: {args.queries} queries over {args.items} items (128-d): "
          f"{took:.2f} s ({took / args.queries * 1000:.1f} ms per query), preparing {prepared:.2f} s")


def _writes(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(home=Path(tmp))
        command.upgrade(alembic_config(settings.resolved_database_url), "head")
        engine = make_engine(settings)
        sessions = make_session_factory(engine)
        now = utcnow()
        with engine.begin() as conn:  # a full log: every timed write deletes the oldest row too
            conn.execute(insert(QueryLog), [{"external_id": f"sku-{i}", "k": 10, "created_at": now}
                                            for i in range(args.max_rows)])
        seconds = []
        for i in range(args.writes):
            started = time.perf_counter()
            assert log_query(sessions, f"sku-{i % 5000}", 10, args.max_rows)
            seconds.append(time.perf_counter() - started)
        ms = np.array(seconds) * 1000
        machine = platform.processor() or platform.machine()
        print(f"{platform.node()} ({machine}), SQLite {engine.dialect.server_version_info}")
        print(f"log_query with a full log of {args.max_rows}: {args.writes} writes, median {np.median(ms):.3f} ms, "
              f"p95 {np.percentile(ms, 95):.3f} ms, p99 {np.percentile(ms, 99):.3f} ms")
        engine.dispose()


if __name__ == "__main__":
    main()
