"""Time ``POST /api/v1/imports`` until its 202, with the local store and with a SeaweedFS bucket.

What the request does since uploads go through the store (core/import_uploads.py):
stream the file to a temporary file, read its first rows for relative image paths,
hash it, put it in the store, write the job. No worker runs: only the request is
timed. Usage: ``python bench/bench_import_upload.py [ROWS]`` (default 1,000,000 rows,
about 50 MB); it starts its own SeaweedFS (the test fixture's) on loopback.
"""

from __future__ import annotations

import io
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from alembic import command

from core.config import Settings
from migrations import alembic_config
from service.app import create_app
from tests.support.servers import ObjectStoreServer

REPEATS = 3


class _NoWorker:
    """A dispatcher that queues nothing: the import itself is not what is timed."""

    def send(self, *args: Any, **kwargs: Any) -> str:
        return ""


def _time_uploads(settings: Settings, data: bytes) -> list[float]:
    command.upgrade(alembic_config(settings.resolved_database_url), "head")
    app = create_app(settings, dispatcher=_NoWorker())
    client = app.test_client()
    times = []
    try:
        for _ in range(REPEATS):
            start = time.perf_counter()
            response = client.post("/api/v1/imports", data={"file": (io.BytesIO(data), "catalog.csv")},
                                   content_type="multipart/form-data", headers={"X-API-Key": "bench"})
            times.append(time.perf_counter() - start)
            assert response.status_code == 202, response.json
    finally:
        app.extensions["lookalike"].close()
    return times


def main(rows: int) -> None:
    data = ("external_id,title,category,images\n" + "".join(
        f"id-{i},Title {i},hats,/srv/images/{i}.jpg\n" for i in range(rows))).encode()
    server = ObjectStoreServer.start()
    try:
        for kind in ("local", "s3"):
            settings = Settings(home=Path(tempfile.mkdtemp(prefix="bench-upload-")), admin_api_key="bench")
            if kind == "s3":
                settings = settings.replace(artifact_store=f"s3://{server.bucket}/bench", s3_access_key_id="x",
                                            s3_endpoint_url=server.endpoint_url, s3_secret_access_key="x")
            times = _time_uploads(settings, data)
            print(f"{kind:5} {rows:,} rows, {len(data):,} bytes: median {statistics.median(times):.2f} s "
                  f"({', '.join(f'{t:.2f}' for t in times)})")
    finally:
        server.close()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
