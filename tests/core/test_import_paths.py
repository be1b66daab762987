"""Where an import may read images (issue 12): only regular files inside the import roots,
at most the size cap + 1 byte of them, and job results that tell nothing about other files.

The jobs go through the worker's own handler (the in-process dispatcher), on SQLite and on
a throwaway PostgreSQL; docs/CONFIG.md, "Where an import may read images", is the contract.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from core.config import Settings
from core.db import JobStatus
from tests.fixtures.catalog import run_job, write_image
from worker.local import InProcessDispatcher

CAP = 5000
OUTSIDE = "not inside the import folders (the catalog's folder or LOOKALIKE_IMPORT_ROOTS)"


@pytest.fixture
def places(tmp_path: Path) -> dict[str, Path]:
    """``shop/`` (the catalog's folder), ``photos/`` (a configured root), ``outside/`` (neither)."""
    shop, photos, outside = tmp_path / "shop", tmp_path / "photos", tmp_path / "outside"
    write_image(shop / "a.png", 1)
    write_image(photos / "p.png", 2)
    write_image(outside / "secret.png", 3)
    (shop / "big.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * CAP)
    os.mkfifo(shop / "pipe.png")
    (shop / "dir.png").mkdir()
    (shop / "out.png").symlink_to(outside / "secret.png")
    (shop / "outdir").symlink_to(outside)
    return {"shop": shop, "photos": photos, "outside": outside}


@pytest.fixture
def rooted_worker(any_db_settings: Settings, sessions: sessionmaker[Session],
                  places: dict[str, Path]) -> Iterator[InProcessDispatcher]:
    """The worker with ``photos/`` and ``/dev`` as import roots and a small size cap."""
    settings = any_db_settings.replace(import_roots=(places["photos"], Path("/dev")), max_image_bytes=CAP)
    dispatcher = InProcessDispatcher(settings)
    yield dispatcher
    dispatcher.close()


@pytest.mark.timeout(120)  # a FIFO that blocked the job would hang here
def test_each_refused_path_is_one_reported_row_and_the_job_finishes(
        rooted_worker: InProcessDispatcher, sessions: sessionmaker[Session], places: dict[str, Path]) -> None:
    shop, photos, outside = places["shop"], places["photos"], places["outside"]
    refs = {
        "ok-shop": "a.png",
        "ok-root": str(photos / "p.png"),
        "fifo": "pipe.png",
        "device": "/dev/zero",
        "dir": "dir.png",
        "big": "big.png",
        "missing": "nope.png",
        "outside": str(outside / "secret.png"),
        "outside-missing": str(outside / "no-such.png"),
        "link": "out.png",
        "link-dir": "outdir/secret.png",
        "dotdot": "../outside/secret.png",
        "key": "/root/.ssh/id_rsa",
        "uri": f"file://{outside / 'secret.png'}",
    }
    catalog = shop / "catalog.csv"
    catalog.write_text("external_id,images\n" + "".join(f"{k},{v}\n" for k, v in refs.items()), encoding="utf-8")
    job = run_job(rooted_worker, sessions, catalog)
    assert job.status is JobStatus.SUCCEEDED, job.error
    assert (job.result["created"], job.result["rejected"]) == (2, len(refs) - 2)
    reasons = {
        "fifo": "not a regular file (a FIFO)",
        "device": "not a regular file (a character device)",
        "dir": "not a regular file (a directory)",
        "big": f"file is more than the limit of {CAP:,} bytes",
        "missing": "file not found",
        **dict.fromkeys(["outside", "outside-missing", "link", "link-dir", "dotdot", "key", "uri"], OUTSIDE),
    }
    lines = {name: n for n, name in enumerate(refs, start=2)}
    assert job.result["errors"] == [f"line {lines[name]} ({name}): image {refs[name]!r}: {reason}"
                                    for name, reason in reasons.items()]
    # Where a link or ".." leads is never shown: only the reference as the row wrote it.
    assert str(outside / "secret.png") not in json.dumps(job.result["errors"]).replace(refs["outside"], "")


def test_a_catalog_elsewhere_cannot_reach_into_another_catalogs_folder(
        rooted_worker: InProcessDispatcher, sessions: sessionmaker[Session], places: dict[str, Path],
        tmp_path: Path) -> None:
    """The catalog's own folder is a root for that catalog only (an uploaded catalog's folder
    is the server's upload folder)."""
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    catalog = uploads / "c.csv"
    catalog.write_text(f"external_id,images\nx,{places['shop'] / 'a.png'}\ny,{places['photos'] / 'p.png'}\n",
                       encoding="utf-8")
    job = run_job(rooted_worker, sessions, catalog)
    assert job.status is JobStatus.SUCCEEDED, job.error
    assert job.result["created"] == 1
    assert job.result["errors"] == [f"line 2 (x): image {str(places['shop'] / 'a.png')!r}: {OUTSIDE}"]


def test_a_folder_import_reads_only_its_folder(rooted_worker: InProcessDispatcher, sessions: sessionmaker[Session],
                                               places: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    write_image(folder / "hats" / "h1.png", 4)
    (folder / "hats" / "leak.png").symlink_to(places["outside"] / "secret.png")
    # Visited in sorted order: h1, h2, leak. An undecodable byte in h2's extension only: its
    # external id (the path without extension) is readable, its source_uri would not be.
    write_image(folder / "hats" / b"h2.p\xffng".decode("utf-8", "surrogateescape"), 5)
    job = run_job(rooted_worker, sessions, folder, fmt="folder")
    assert job.status is JobStatus.SUCCEEDED, job.error
    assert job.result["created"] == 1
    assert job.result["errors"] == ["line 2 (hats-h2): image reference is not valid UTF-8",
                                    f"line 3 (hats-leak): image 'hats/leak.png': {OUTSIDE}"]
