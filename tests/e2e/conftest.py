"""The native full stack (``lookalike stack``'s supervisor) for the end-to-end tests.

One stack per module: PostgreSQL, Redis, the migration, gunicorn behind nginx (every
request of the tests goes through nginx), a Celery worker and beat, each a real
process on a free loopback port, all under the same :class:`stack.Stack` that
``make stack`` runs. The tests drive it only through
HTTP, and through the supervisor for the faults (kill, stop, restart).
"""

from __future__ import annotations

import io
import itertools
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image

from core.catalog.sample import CLASSES, Split, load_split
from core.config import LogLevel, Settings
from stack import Stack, StackConfig
from tests.conftest import FASHION_MNIST_DIR
from tests.support.servers import free_port, weed_ports

ADMIN_KEY = "e2e-admin-key"
WRITE_HEADERS = {"X-API-Key": ADMIN_KEY}


@dataclass
class Api:
    """A thin HTTP client for the stack's API, with the helpers every step needs."""

    base: str
    http: requests.Session

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.http.get(self.base + path, timeout=30, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.http.post(self.base + path, headers=WRITE_HEADERS, timeout=30, **kwargs)

    def put_item(self, external_id: str, png: bytes, category: str) -> requests.Response:
        return self.http.put(
            f"{self.base}/api/v1/items/{external_id}", headers=WRITE_HEADERS, timeout=30,
            data={"metadata": f'{{"title": "{external_id}", "category": "{category}"}}'},
            files={"image": (f"{external_id}.png", png, "image/png")},
        )

    def job(self, job_id: int) -> dict[str, Any]:
        response = self.get(f"/api/v1/jobs/{job_id}")
        response.raise_for_status()
        return response.json()

    def wait_job(self, job_id: int, timeout: float = 300.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if job["status"] in {"succeeded", "failed", "cancelled"}:
                return job
            time.sleep(0.25)
        raise TimeoutError(f"job {job_id} still {self.job(job_id)['status']} after {timeout}s")

    def similar(self, external_id: str, k: int = 5) -> requests.Response:
        return self.get(f"/api/v1/items/{external_id}/similar", params={"k": k})

    def search_image(self, png: bytes, k: int = 5) -> requests.Response:
        return self.http.post(f"{self.base}/api/v1/search", data={"k": str(k)},
                              files={"image": ("q.png", png, "image/png")}, timeout=30)


class SimilarLoad:
    """Clients asking similar-by-id in background threads until the ``with`` block ends.

    Client ``i`` cycles over ``id_lists[i]``. Every answer that is not a 200 (or a refused or
    reset connection) is a failure; every 200 records the index version it was served from,
    so a test can assert that a publish under load failed no request and was followed.
    """

    def __init__(self, api: Api, id_lists: list[list[str]]) -> None:
        self.failures: list[str] = []
        self.versions: list[str] = []
        self._api = api
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(ids,)) for ids in id_lists]

    def _run(self, ids: list[str]) -> None:
        cycle = itertools.cycle(ids)
        while not self._stop.is_set():
            try:
                response = self._api.similar(next(cycle))
            except Exception as exc:  # a refused or reset connection is a failure too
                self.failures.append(repr(exc))
                continue
            if response.status_code != 200:
                self.failures.append(f"{response.status_code} {response.text[:200]}")
            else:
                self.versions.append(response.json()["index_version"])

    def __enter__(self) -> SimilarLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


@dataclass
class E2E:
    stack: Stack
    api: Api
    home: Path


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, "L").save(buffer, "PNG")
    return buffer.getvalue()


def write_catalog_csv(folder: Path, n: int) -> tuple[Path, dict[str, str]]:
    """``n`` Fashion-MNIST training images as PNG files plus a CSV naming them; id -> category."""
    images, labels = load_split(FASHION_MNIST_DIR, Split.TRAIN)
    folder.mkdir(parents=True)
    categories: dict[str, str] = {}
    lines = ["external_id,title,category,images"]
    for i in range(n):
        category = CLASSES[int(labels[i])][0]
        external_id = f"fm-{i:05d}"
        path = folder / f"{external_id}.png"
        Image.fromarray(images[i], "L").save(path)
        lines.append(f"{external_id},{category} {i},{category},{path}")
        categories[external_id] = category
    csv = folder / "catalog.csv"
    csv.write_text("\n".join(lines) + "\n")
    return csv, categories


@pytest.fixture(scope="module")
def e2e() -> Iterator[E2E]:
    # Not pytest's tmp_path: as root, PostgreSQL runs as `postgres`, which must be able
    # to reach its data directory (pytest's base temp dir is private to root).
    root = Path(tempfile.mkdtemp(prefix="lookalike-e2e-"))
    root.chmod(0o755)
    config = StackConfig(home=root / "home", api_port=free_port(), gunicorn_port=free_port(),
                         postgres_port=free_port(), redis_port=free_port(), api_workers=2, worker_concurrency=2,
                         # As docker-compose runs it: the services share an object store, no folder.
                         object_store=True, object_store_port=weed_ports(4))
    base = Settings(
        import_roots=(root / "incoming",),  # where the tests write catalog images (E2E.home is root)
        admin_api_key=ADMIN_KEY, annoy_trees=20, verify_sample_size=200, torch_threads=1,
        index_poll_seconds=1.0, log_level=LogLevel.INFO,
        # Nothing rebuilds on its own (the tests decide when), and a lost job is
        # looked for every 3 s instead of every minute.
        fresh_rebuild_threshold=1_000_000, reindex_cron="", retrain_cron="",
        job_heartbeat_seconds=1.0, orphaned_job_seconds=6.0,
        # The retrains train the given config (the search is tested in tests/worker).
        retrain_search="off",
    )
    stack = Stack(config, base)
    stack.start()
    try:
        yield E2E(stack, Api(config.api_url, requests.Session()), root)
    finally:
        stack.stop()
        logs = config.log_dir
        for log in sorted(logs.glob("*.log")):  # on failure, pytest shows this output
            print(f"----- {log.name} (last 3000 chars)\n{log.read_text(errors='replace')[-3000:]}")
        shutil.rmtree(root, ignore_errors=True)
