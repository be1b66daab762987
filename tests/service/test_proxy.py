"""nginx in front of gunicorn (issue #12): slow clients, requests through it, its errors, client addresses.

The live tests run a real ``lookalike serve`` (one gunicorn worker, four threads) and
a real ``lookalike proxy`` (nginx) on loopback. The unit tests check
:class:`service.proxy.TrustedProxies`, which believes ``X-Forwarded-*`` only from a
trusted peer.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from core.config import Settings
from service.proxy import TrustedProxies
from tests.service.live import REPO, LiveServer, server_env
from tests.service.support import Catalog, png_bytes
from tests.support.servers import free_port, wait_for_port

SLOW_CLIENTS = 12
CLIENT_BODY_TIMEOUT = 3
"""nginx's client timeouts in these tests (seconds; the default is 10 s for headers, 30 s for bodies)."""


# ---------------------------------------------------------------------------- unit: the middleware
def _peer(remote: str, headers: dict[str, str]) -> dict[str, Any]:
    """What the app behind :class:`TrustedProxies` sees of a request from ``remote``."""
    seen: dict[str, Any] = {}

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.update(addr=environ["REMOTE_ADDR"], scheme=environ["wsgi.url_scheme"])
        start_response("200 OK", [])
        return []

    environ = {"REMOTE_ADDR": remote, "wsgi.url_scheme": "http", "HTTP_HOST": "api",
               **{"HTTP_" + k.upper().replace("-", "_"): v for k, v in headers.items()}}
    TrustedProxies(app, Settings(trusted_proxies=("127.0.0.1", "10.1.0.0/16")).trusted_proxy_networks)(
        environ, lambda *_: None)
    return seen


FORWARDED = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}


@pytest.mark.parametrize("remote", ["127.0.0.1", "10.1.200.3", "::ffff:127.0.0.1"])
def test_forwarded_headers_from_a_trusted_proxy_name_the_client(remote: str) -> None:
    assert _peer(remote, FORWARDED) == {"addr": "203.0.113.7", "scheme": "https"}


@pytest.mark.parametrize("remote", ["127.0.0.2", "10.2.0.1", "::1", ""])
def test_forwarded_headers_from_anyone_else_are_ignored(remote: str) -> None:
    assert _peer(remote, FORWARDED) == {"addr": remote, "scheme": "http"}


def test_only_the_hop_the_proxy_added_is_believed() -> None:
    # A client's own X-Forwarded-For arrives first in the list; the trusted proxy's entry is last.
    seen = _peer("127.0.0.1", {"X-Forwarded-For": "198.51.100.1, 203.0.113.7"})
    assert seen["addr"] == "203.0.113.7"


# ---------------------------------------------------------------------------- live: nginx + gunicorn
@dataclass
class Proxied:
    gunicorn: LiveServer
    nginx: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def proxied(catalog: Catalog, tmp_path: Path) -> Iterator[Proxied]:
    settings = catalog.settings.replace(
        trusted_proxies=("127.0.0.1",), proxy_client_header_timeout=CLIENT_BODY_TIMEOUT,
        proxy_client_body_timeout=CLIENT_BODY_TIMEOUT, proxy_send_timeout=CLIENT_BODY_TIMEOUT)
    # One worker with four threads: four slow clients already hold every thread it has.
    gunicorn = LiveServer(settings, tmp_path / "gunicorn.log", workers=1).start()
    port = free_port()
    log_path = tmp_path / "nginx.log"
    nginx = subprocess.Popen(
        [sys.executable, "-m", "cli", "proxy", "--listen", f"127.0.0.1:{port}",
         "--upstream", f"127.0.0.1:{gunicorn.port}", "--dir", str(tmp_path / "nginx")],
        cwd=REPO, env=server_env(settings), start_new_session=True,
        stdout=open(log_path, "ab"), stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, timeout=30)
        yield Proxied(gunicorn, nginx, port, log_path)
    finally:
        if nginx.poll() is None:
            os.killpg(nginx.pid, signal.SIGQUIT)  # graceful; worker_shutdown_timeout is 10 s
            try:
                nginx.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(nginx.pid, signal.SIGKILL)
                nginx.wait(5)
        gunicorn.stop()


class SlowClients:
    """``n`` uploads that send their headers and then one body byte every half second."""

    def __init__(self, port: int, n: int) -> None:
        self.sockets = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(n)]
        head = ("POST /api/v1/search HTTP/1.1\r\nHost: lookalike\r\n"
                "Content-Type: multipart/form-data; boundary=slow\r\nContent-Length: 100000\r\n\r\n--slow\r\n")
        for sock in self.sockets:
            sock.sendall(head.encode())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._trickle, daemon=True)
        self._thread.start()

    def _trickle(self) -> None:
        while not self._stop.wait(0.5):
            for sock in self.sockets:
                try:
                    sock.sendall(b"x")
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for sock in self.sockets:
            sock.close()


def _healthz_seconds(url: str, timeout: float) -> float:
    """How long ``/healthz`` took to answer 200; ``timeout`` if it did not answer in time."""
    start = time.monotonic()
    try:
        response = requests.get(f"{url}/healthz", timeout=timeout)
    except requests.Timeout:
        return timeout
    assert response.status_code == 200, response.text
    return time.monotonic() - start


def _wait_healthy(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while _healthz_seconds(url, 2.0) >= 2.0:
        assert time.monotonic() < deadline, f"{url} still not answering /healthz"


@pytest.mark.slow
def test_slow_clients_stall_gunicorn_directly_but_not_behind_nginx(proxied: Proxied) -> None:
    gunicorn_url = proxied.gunicorn.url
    # The problem, measured: gunicorn gives each of them a thread until its body is read.
    slow = SlowClients(proxied.gunicorn.port, SLOW_CLIENTS)
    try:
        time.sleep(1.0)
        direct = _healthz_seconds(gunicorn_url, timeout=3.0)
    finally:
        slow.close()
    _wait_healthy(gunicorn_url)  # closed sockets end their requests and free the threads

    # Behind nginx the same clients wait in nginx; gunicorn never sees their requests.
    slow = SlowClients(proxied.port, SLOW_CLIENTS)
    try:
        time.sleep(1.0)
        proxied_seconds = max(_healthz_seconds(proxied.url, timeout=10.0) for _ in range(5))
        gunicorn_seconds = _healthz_seconds(gunicorn_url, timeout=10.0)
    finally:
        slow.close()
    measured = f"direct {direct:.2f}s, through nginx {proxied_seconds:.3f}s, gunicorn meanwhile {gunicorn_seconds:.3f}s"
    print(measured)
    assert direct >= 3.0, measured  # timed out: every thread is held by a slow client
    assert proxied_seconds < 2.0 and gunicorn_seconds < 2.0, measured


@pytest.mark.slow
def test_a_stalled_upload_is_cut_off_by_nginx_after_its_body_timeout(proxied: Proxied) -> None:
    sock = socket.create_connection(("127.0.0.1", proxied.port), timeout=CLIENT_BODY_TIMEOUT + 10)
    sock.sendall(b"POST /api/v1/search HTTP/1.1\r\nHost: lookalike\r\nContent-Type: multipart/form-data; "
                 b"boundary=b\r\nContent-Length: 1000\r\n\r\n--b\r\n")
    start = time.monotonic()
    try:
        while sock.recv(65536):  # nginx may answer 408 before closing; either way it closes
            pass
    finally:
        sock.close()
    assert CLIENT_BODY_TIMEOUT - 0.5 <= time.monotonic() - start < CLIENT_BODY_TIMEOUT + 5


@pytest.mark.slow
def test_requests_through_nginx_and_its_own_413_in_the_api_error_shape(proxied: Proxied, catalog: Catalog,
                                                                       auth: dict[str, str]) -> None:
    similar = requests.get(f"{proxied.url}/api/v1/items/sku-011/similar", params={"k": 5}, timeout=30)
    assert similar.status_code == 200, similar.text
    assert len(similar.json()["results"]) == 5

    by_photo = requests.post(f"{proxied.url}/api/v1/search", data={"k": "3"},
                             files={"image": ("q.png", png_bytes(1003), "image/png")}, timeout=30)
    assert by_photo.status_code == 200, by_photo.text
    assert len(by_photo.json()["results"]) == 3

    put = requests.put(f"{proxied.url}/api/v1/items/proxied-1", headers=auth, timeout=30,
                       data={"metadata": '{"title": "through nginx", "category": "shoes"}'},
                       files={"image": ("p.png", png_bytes(4242), "image/png")})
    assert put.status_code == 201, put.text  # a new item
    got = requests.get(f"{proxied.url}/api/v1/items/proxied-1", timeout=30)
    assert got.status_code == 200 and got.json()["title"] == "through nginx", got.text

    # Over the app's own cap for one search image but under nginx's: the app's 413, passed through.
    oversize = b"\x89PNG\r\n\x1a\n" + b"\0" * (catalog.settings.max_image_bytes + 1)
    app_413 = requests.post(f"{proxied.url}/api/v1/search", files={"image": ("big.png", oversize, "image/png")},
                            timeout=60)
    assert app_413.status_code == 413, app_413.text
    assert app_413.json()["error"]["code"] == "payload_too_large"

    # Over nginx's limit (the largest body any endpoint takes): refused from the headers alone, as JSON.
    limit = catalog.settings.max_request_bytes
    connection = http.client.HTTPConnection("127.0.0.1", proxied.port, timeout=30)
    connection.putrequest("POST", "/api/v1/imports")
    connection.putheader("Content-Type", "multipart/form-data; boundary=b")
    connection.putheader("Content-Length", str(limit + 1))
    connection.putheader("X-Request-ID", "too-big-1")
    connection.endheaders()
    response = connection.getresponse()
    body = response.read()
    connection.close()
    assert response.status == 413
    assert response.getheader("Content-Type") == "application/json"
    assert response.getheader("X-Request-ID") == "too-big-1"
    assert json.loads(body) == {"error": {
        "code": "payload_too_large",
        "message": f"request body is larger than {limit} bytes, the most any endpoint accepts",
        "details": {"limit_bytes": limit}, "request_id": "too-big-1"}}


def _get_from(source: str, port: int, path: str, headers: dict[str, str]) -> int:
    """A GET sent from the loopback address ``source`` (so it differs from the proxy's 127.0.0.1)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))
    lines = [f"GET {path} HTTP/1.1", "Host: lookalike", "Connection: close", *(f"{k}: {v}" for k, v in headers.items())]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    sock.close()
    return int(data.split(b" ", 2)[1])


@pytest.mark.slow
def test_the_access_log_shows_the_client_nginx_saw_and_ignores_forged_headers(proxied: Proxied) -> None:
    path = "/api/v1/items/sku-011/similar?k=2"
    forged = {"X-Forwarded-For": "203.0.113.66"}
    via_nginx, direct = uuid.uuid4().hex, uuid.uuid4().hex
    assert _get_from("127.0.0.3", proxied.port, path, {**forged, "X-Request-ID": via_nginx}) == 200
    assert _get_from("127.0.0.4", proxied.gunicorn.port, path, {**forged, "X-Request-ID": direct}) == 200
    deadline = time.monotonic() + 10
    while True:
        log = proxied.gunicorn.log_path.read_text(errors="replace")
        lines = {rid: [line for line in log.splitlines() if f"rid={rid}" in line] for rid in (via_nginx, direct)}
        if all(lines.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    # Through nginx: the real client, not nginx (127.0.0.1) and not what the client claimed.
    assert len(lines[via_nginx]) == 1 and re.search(r'\b127\.0\.0\.3 "GET ', lines[via_nginx][0]), lines
    # Straight to gunicorn from an untrusted peer: its own address; the forged header is ignored.
    assert len(lines[direct]) == 1 and re.search(r'\b127\.0\.0\.4 "GET ', lines[direct][0]), lines
