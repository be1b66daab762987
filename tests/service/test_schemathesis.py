"""schemathesis against the OpenAPI document of a live gunicorn server: no 5xx, every answer conforms.

The server runs in broker mode against a throwaway Redis with no Celery worker
attached, so the jobs the fuzzer starts (reindex, retrain, embeddings) are queued
and never run: the API is what is under test here.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from service.apikeys import create_key
from tests.service.live import REPO, LiveServer
from tests.service.support import Catalog
from tests.support.servers import RedisServer

MAX_EXAMPLES = 20
CONFIG = REPO / "tests" / "service" / "schemathesis.toml"


@pytest.mark.slow
@pytest.mark.redis
def test_schemathesis(catalog: Catalog, redis_server: RedisServer, tmp_path: Path) -> None:
    key, _ = create_key(catalog.sessions, "schemathesis")
    settings = catalog.settings.replace(broker_url=redis_server.url.rsplit("/", 1)[0] + "/13")
    server = LiveServer(settings, tmp_path / "server.log").start()
    try:
        run = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "run",
             f"{server.url}/api/v1/openapi.json", "--max-examples", str(MAX_EXAMPLES), "--seed", "20261124",
             # one worker: hypothesis' lambda-source parsing is not thread-safe on CPython 3.11
             "--workers", "1", "-H", f"Authorization: Bearer {key}", "--request-timeout", "30"],
            cwd=tmp_path, capture_output=True, text=True, timeout=600,
        )
    finally:
        server.stop()
    output = run.stdout + run.stderr
    (tmp_path / "schemathesis.log").write_text(output)
    assert run.returncode == 0, output[-8000:] + "\n--- server log ---\n" + server.log()
    counts = re.search(r"(\d+) generated, (\d+) passed", output)
    assert counts, output[-3000:]
    generated, passed = int(counts.group(1)), int(counts.group(2))
    assert generated >= 500, f"only {generated} test cases were generated"
    assert passed == generated
