"""Hot swap under traffic against a real gunicorn server: no failed request, and the new index wins."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.service.live import LiveServer
from tests.service.support import Catalog, publish
from tests.support.servers import RedisServer

CLIENTS = 3


def traffic(url: str, stop: threading.Event, log: list[tuple[float, int, str]]) -> None:
    session = requests.Session()  # keep-alive, like a real client
    while not stop.is_set():
        try:
            response = session.get(url, timeout=10)
            version = response.json().get("index_version", "") if response.ok else response.text[:200]
            log.append((time.monotonic(), response.status_code, version))
        except requests.RequestException as exc:
            log.append((time.monotonic(), 0, repr(exc)))


@pytest.mark.slow
@pytest.mark.parametrize("notification", ["polling", pytest.param("redis", marks=pytest.mark.redis)])
def test_publish_under_traffic(catalog: Catalog, tmp_path: Path, notification: str,
                               request: pytest.FixtureRequest) -> None:
    if notification == "redis":
        redis_server: RedisServer = request.getfixturevalue("redis_server")
        # polling so slow that only the notification can explain a swap within seconds
        settings = catalog.settings.replace(redis_url=redis_server.url, index_poll_seconds=60.0)
    else:
        settings = catalog.settings.replace(index_poll_seconds=0.5)
    catalog.settings = settings  # the publish below notifies through these settings
    old = catalog.index_version
    server = LiveServer(settings, tmp_path / "server.log").start()
    stop = threading.Event()
    logs: list[list[tuple[float, int, str]]] = [[] for _ in range(CLIENTS)]
    threads = [threading.Thread(target=traffic, args=(f"{server.url}/api/v1/items/sku-011/similar?k=5", stop, log))
               for log in logs]
    try:
        for t in threads:
            t.start()
        time.sleep(1.5)
        ids = [i for item in catalog.items.values() for i in item["image_ids"]]
        published_at = time.monotonic()
        new = publish(catalog, ids)
        deadline = published_at + 20
        while time.monotonic() < deadline:
            recent = [entry for log in logs for entry in log if entry[0] > time.monotonic() - 1.0]
            if recent and all(v == new for _, _, v in recent) and time.monotonic() - published_at > 2:
                break
            time.sleep(0.2)
        stop.set()
        for t in threads:
            t.join(15)
        metrics = requests.get(f"{server.url}/metrics", timeout=10).text
    finally:
        stop.set()
        server.stop()
    entries = sorted(entry for log in logs for entry in log)
    failures = [e for e in entries if e[1] != 200]
    assert not failures, (failures[:5], server.log())
    assert len(entries) > 50
    versions = [v for _, _, v in entries]
    assert versions[0] == old and versions[-1] == new
    first_new = next(t for t, _, v in entries if v == new)
    last_old = max(t for t, _, v in entries if v == old)
    assert first_new - published_at < 5.0, "the swap took too long"
    assert last_old - published_at < 5.0, "a worker kept serving the old index"
    assert {v for t, _, v in entries if t > last_old} == {new}
    # /metrics aggregates both workers (prometheus multi-process mode)
    served = re.search(r'lookalike_queries_total\{kind="item"\} ([0-9.e+]+)', metrics)
    assert served and float(served.group(1)) >= len(entries)
    assert re.search(rf'lookalike_active_index_info\{{index_version="{new}",model_version="[^"]+"\}} 1\.0', metrics)
    assert 'lookalike_http_request_duration_seconds_count{endpoint="/api/v1/items/<external_id>/similar"' in metrics
