"""Catalog import rate into SQLite and PostgreSQL (goal: >= 2,000 items/s for 10,000 items).

Scenarios, each on a fresh database and a fresh media directory:

- ``sample``: what ``lookalike catalog sample fashion-mnist --limit N`` does: PNG-encode
  Fashion-MNIST images, validate and store them, upsert items and images;
- ``sample, 1 image thread``: the same with the image work on one thread (the
  effect of ``image_workers``);
- ``re-import``: the same source again (everything unchanged: hash and compare only);
- ``csv``: a CSV listing N PNG files on disk (written before timing starts).

Seconds are wall time of the import call; the CPU columns are this process's user
and system time over the same span (all threads), so a machine busy with other work
shows up as wall >> CPU, and file-system cost shows up as system time.
PostgreSQL is a throwaway server (tests/support/servers.py), fsync off as in tests.

    PYTHONPATH=. python bench/bench_import.py [--quick] [--items N] [--no-postgres]
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import resource
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from sqlalchemy.orm import Session, sessionmaker

from core.catalog import DEFAULT_DATASET_DIR, ImportReport, fashion_mnist_source, import_rows, open_source
from core.db import make_engine, make_session_factory
from core.media import MediaStore
from migrations import alembic_config
from tests.support.servers import PostgresServer

GOAL = 2000.0


@dataclass
class Result:
    backend: str
    scenario: str
    report: ImportReport
    cpu: tuple[float, float]
    """(user, system) CPU seconds of this process during the import."""


def _timed(run: Callable[[], ImportReport]) -> tuple[ImportReport, tuple[float, float]]:
    before = resource.getrusage(resource.RUSAGE_SELF)
    report = run()
    after = resource.getrusage(resource.RUSAGE_SELF)
    return report, (after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime)


def _write_csv_catalog(directory: Path, items: int) -> Path:
    """N PNG files and a CSV that lists them (same images as the sample)."""
    directory.mkdir(parents=True)
    rows = list(fashion_mnist_source(DEFAULT_DATASET_DIR, limit=items).rows)
    path = directory / "catalog.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["external_id", "title", "category", "attributes", "images"])
        for row in rows:
            name = f"img/{row.external_id}.png"
            (directory / "img").mkdir(exist_ok=True)
            (directory / name).write_bytes(row.images[0].data or b"")
            writer.writerow([row.external_id, row.title, row.category, '{"split": "train"}', name])
    return path


class Backend:
    """Hands out fresh migrated databases of one kind."""

    def __init__(self, name: str, make_url: Callable[[str], str]) -> None:
        self.name, self._make_url = name, make_url

    def fresh(self, tag: str) -> sessionmaker[Session]:
        url = self._make_url(tag)
        command.upgrade(alembic_config(url), "head")
        return make_session_factory(make_engine(url))


def run_backend(backend: Backend, scratch: Path, items: int, csv_path: Path) -> list[Result]:
    results: list[Result] = []

    def store(tag: str) -> MediaStore:
        return MediaStore(scratch / f"media-{backend.name}-{tag}", max_pixels=40_000_000,
                          max_bytes=20 * 1024 * 1024, fsync=False)

    sessions = backend.fresh("sample")
    media = store("sample")
    for scenario in ("sample", "re-import"):
        report, cpu = _timed(lambda: import_rows(fashion_mnist_source(DEFAULT_DATASET_DIR, limit=items).rows,
                                                 sessions=sessions, store=media))
        results.append(Result(backend.name, scenario, report, cpu))

    one = backend.fresh("one-thread")
    report, cpu = _timed(lambda: import_rows(fashion_mnist_source(DEFAULT_DATASET_DIR, limit=items).rows,
                                             sessions=one, store=store("one-thread"), image_workers=1))
    results.append(Result(backend.name, "sample, 1 image thread", report, cpu))

    from_csv = backend.fresh("csv")
    source = open_source(csv_path)
    report, cpu = _timed(lambda: import_rows(source.rows, sessions=from_csv, store=store("csv"),
                                             roots=source.import_roots(())))
    results.append(Result(backend.name, "csv", report, cpu))
    for result in results:
        assert not result.report.errors, result.report.errors[:3]
        assert result.report.rows == items, (result.scenario, result.report.summary())
    return results


def print_table(results: list[Result]) -> None:
    print("| backend | scenario | items | seconds | items/s | CPU user s | CPU sys s | goal >= 2,000/s |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for r in results:
        rate = r.report.items_per_second
        print(f"| {r.backend} | {r.scenario} | {r.report.rows:,} | {r.report.seconds:.2f} | {rate:,.0f} | "
              f"{r.cpu[0]:.2f} | {r.cpu[1]:.2f} | {'yes' if rate >= GOAL else 'no'} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 items instead of 10,000")
    parser.add_argument("--items", type=int, help="number of items (overrides --quick)")
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    args = parser.parse_args()
    items = args.items or (2000 if args.quick else 10_000)

    scratch = Path(tempfile.mkdtemp(prefix="lookalike-bench-import-"))
    server: PostgresServer | None = None
    try:
        csv_path = _write_csv_catalog(scratch / "csv", items)
        backends = [Backend("SQLite", lambda tag: f"sqlite:///{scratch / f'{tag}.db'}")]
        if not args.no_postgres:
            pg = server = PostgresServer.start()
            backends.append(Backend("PostgreSQL", lambda tag: pg.create_database(f"bench_{tag.replace('-', '_')}")))
        load_before = os.getloadavg()[0]
        results = [r for backend in backends for r in run_backend(backend, scratch, items, csv_path)]
        print(f"\n{items:,} Fashion-MNIST items; {platform.machine()}, {os.cpu_count()} CPUs; "
              f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}\n")
        print_table(results)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
