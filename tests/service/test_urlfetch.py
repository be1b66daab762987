"""The URL fetch guard: allow-list, public addresses only (after DNS), size and time caps."""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from flask.testing import FlaskClient

from service.app import create_app
from service.urlfetch import UrlFetcher, UrlFetchError, host_allowed, is_public_address
from tests.service.support import Catalog, png_bytes

PNG = png_bytes(99)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path == "/slow":
            self.send_response(200)
            self.end_headers()
            for _ in range(50):
                self.wfile.write(b"x" * 100)
                self.wfile.flush()
                time.sleep(0.1)
            return
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
            self.end_headers()
            return
        body = PNG if self.path == "/ok.png" else b"y" * 10_000
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        if self.path != "/big-undeclared":
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[int]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1]
    httpd.shutdown()


def fetcher(port_ok: bool = True, **kwargs) -> UrlFetcher:
    """Resolves images.test to loopback; the address policy is relaxed only where a test says so."""
    return UrlFetcher(allowed_hosts=["images.test", "*.cdn.test"], max_bytes=kwargs.pop("max_bytes", 5000),
                      timeout=kwargs.pop("timeout", 2.0), resolver=lambda host, port: ["127.0.0.1"],
                      address_allowed=(lambda a: True) if port_ok else is_public_address, **kwargs)


def test_fetches_an_allowed_host(server: int) -> None:
    assert fetcher().fetch(f"http://images.test:{server}/ok.png") == PNG


@pytest.mark.parametrize("url, message", [
    ("ftp://images.test/a.png", "only http and https"),
    ("file:///etc/passwd", "only http and https"),
    ("http://evil.test/a.png", "not on the URL fetch allow-list"),
    ("http://cdn.test/a.png", "not on the URL fetch allow-list"),
    ("http://user:pw@images.test/a.png", "credentials"),
    ("http:///a.png", "no host"),
])
def test_refuses_by_url(url: str, message: str) -> None:
    with pytest.raises(UrlFetchError, match=message) as info:
        fetcher().fetch(url)
    assert info.value.refused


def test_refuses_private_addresses_after_resolution(server: int) -> None:
    with pytest.raises(UrlFetchError, match="non-public address 127.0.0.1") as info:
        fetcher(port_ok=False).fetch(f"http://images.test:{server}/ok.png")
    assert info.value.refused
    mixed = UrlFetcher(["images.test"], 5000, resolver=lambda h, p: ["93.184.216.34", "10.0.0.5"])
    with pytest.raises(UrlFetchError, match="10.0.0.5"):
        mixed.fetch("http://images.test/a.png")


@pytest.mark.parametrize("address, public", [
    ("127.0.0.1", False), ("10.1.2.3", False), ("172.16.0.1", False), ("192.168.1.1", False),
    ("169.254.169.254", False), ("0.0.0.0", False), ("224.0.0.1", False), ("100.64.0.1", False),
    ("::1", False), ("fe80::1", False), ("fc00::1", False), ("::ffff:127.0.0.1", False),
    ("::ffff:10.0.0.1", False), ("93.184.216.34", True), ("2606:2800:220:1:248:1893:25c8:1946", True),
])
def test_address_policy(address: str, public: bool) -> None:
    assert is_public_address(ipaddress.ip_address(address)) is public


def test_host_patterns() -> None:
    assert host_allowed("a.cdn.test", ["*.cdn.test"]) and not host_allowed("cdn.test", ["*.cdn.test"])
    assert host_allowed("Images.Test.", ["images.test"]) and not host_allowed("images.test.evil", ["images.test"])
    assert not host_allowed("x", [])


def test_size_and_time_caps_and_no_redirects(server: int) -> None:
    with pytest.raises(UrlFetchError, match="10,000 bytes, more than"):
        fetcher().fetch(f"http://images.test:{server}/big")
    with pytest.raises(UrlFetchError, match="larger than 5,000"):
        fetcher().fetch(f"http://images.test:{server}/big-undeclared")
    started = time.monotonic()
    with pytest.raises(UrlFetchError, match="longer than"):
        fetcher(max_bytes=10**6, timeout=0.5).fetch(f"http://images.test:{server}/slow")
    assert time.monotonic() - started < 2.0
    with pytest.raises(UrlFetchError, match="302"):
        fetcher().fetch(f"http://images.test:{server}/redirect")


def test_api_refuses_loopback_even_when_allow_listed(catalog: Catalog, server: int) -> None:
    app = create_app(catalog.settings.replace(url_fetch_enabled=True, url_fetch_allowed_hosts=("localhost",)))
    try:
        client: FlaskClient = app.test_client()
        response = client.post("/api/v1/search", json={"image_url": f"http://localhost:{server}/ok.png"})
        assert response.status_code == 403 and response.json["error"]["code"] == "url_fetch_refused"
        assert "non-public" in response.json["error"]["message"]
        response = client.post("/api/v1/search", json={"image_url": "http://example.com/a.png"})
        assert response.status_code == 403 and "allow-list" in response.json["error"]["message"]
    finally:
        app.extensions["lookalike"].close()


def test_api_searches_a_fetched_image(catalog: Catalog, server: int) -> None:
    app = create_app(catalog.settings)
    context = app.extensions["lookalike"]
    context.url_fetcher = fetcher()  # loopback allowed for this test only
    try:
        response = app.test_client().post("/api/v1/search",
                                          json={"image_url": f"http://images.test:{server}/ok.png", "k": 2})
        assert response.status_code == 200, response.json
        assert response.json["query"]["kind"] == "url" and response.json["count"] == 2
        response = app.test_client().post("/api/v1/search",
                                          json={"image_url": f"http://images.test:{server}/big"})
        assert response.status_code == 502 and response.json["error"]["code"] == "url_fetch_failed"
    finally:
        context.close()
