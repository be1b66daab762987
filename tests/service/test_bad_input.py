"""The bad-input suite: hostile requests get the one right 4xx with the JSON error body, and
a refused write leaves nothing behind.

One section per class of input (issue 12 found them with a battery of hostile requests
against a live server); add new classes here. The app is the real one the other service
tests use (``client``/``app`` fixtures: SQLite catalog, in-process dispatcher).
"""

from __future__ import annotations

import http.client
import io
import ipaddress
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from werkzeug.serving import make_server
from werkzeug.test import EnvironBuilder, TestResponse
from werkzeug.wrappers import Request

from core.config import MULTIPART_OVERHEAD
from core.db import Item, ItemImage, Job, session_scope
from service.app import create_app
from service.csp import API_DOCS_CONTENT_SECURITY_POLICY, UI_CONTENT_SECURITY_POLICY
from service.errors import ApiError
from service.uploads import JSON_BODY_LIMIT, MAX_JSON_DEPTH, parse_json
from service.urlfetch import embedded_ipv4, is_public_address
from tests.service.support import DIM, Catalog, png_bytes


def assert_error(response: TestResponse, status: int, code: str, *, mentions: str = "") -> dict[str, Any]:
    """The response is ``status`` with the project's JSON error body (``code``, a message)."""
    assert response.status_code == status, response.get_data(as_text=True)[:500]
    assert response.mimetype == "application/json"
    error = response.json["error"]
    assert error["code"] == code and error["message"]
    assert mentions.lower() in error["message"].lower(), error["message"]
    return error


def counts(catalog: Catalog) -> tuple[int, int, int]:
    """(items, images, jobs): what a refused write must leave unchanged."""
    with session_scope(catalog.sessions) as s:
        return (s.scalar(select(func.count()).select_from(Item)) or 0,
                s.scalar(select(func.count()).select_from(ItemImage)) or 0,
                s.scalar(select(func.count()).select_from(Job)) or 0)


def media_files(catalog: Catalog) -> int:
    return sum(1 for p in catalog.settings.media_dir.rglob("*") if p.is_file())


def deep(levels: int) -> str:
    return "[" * levels + "]" * levels


# --------------------------------------------------------------------------- deeply nested JSON
DEEP = deep(100_000)


def json_endpoints(catalog: Catalog) -> list[tuple[str, str, str]]:
    """(method, path, body) for every endpoint that reads a JSON body, each nested 100,000 deep."""
    return [
        ("POST", "/api/v1/search", DEEP),
        ("POST", "/api/v1/search", '{"vector": ' + DEEP + "}"),
        ("PUT", "/api/v1/items/deep-1", DEEP),
        ("PUT", "/api/v1/items/sku-001", '{"attributes": {"a": ' + DEEP + "}}"),
        ("POST", "/api/v1/reindex", DEEP),
        ("POST", "/api/v1/retrain", '{"config": {"x": ' + DEEP + "}}"),
        ("POST", f"/api/v1/models/{catalog.model_version}/activate", DEEP),
    ]


def test_deeply_nested_json_bodies_are_400_everywhere(client: FlaskClient, catalog: Catalog, auth: dict) -> None:
    before = counts(catalog)
    for method, path, body in json_endpoints(catalog):
        response = client.open(path, method=method, data=body, content_type="application/json", headers=auth)
        assert_error(response, 400, "bad_request", mentions="nested too deeply")
    assert counts(catalog) == before
    assert client.get("/api/v1/items/deep-1").status_code == 404


def test_deeply_nested_multipart_json_fields_are_400(client: FlaskClient, catalog: Catalog, auth: dict) -> None:
    before, files = counts(catalog), media_files(catalog)
    response = client.put("/api/v1/items/deep-2", data={"metadata": DEEP, "image": (io.BytesIO(png_bytes(5)), "a.png")},
                          content_type="multipart/form-data", headers=auth)
    assert_error(response, 400, "bad_request", mentions="metadata is nested too deeply")
    response = client.post("/api/v1/search", data={"filters": DEEP, "image": (io.BytesIO(png_bytes(6)), "a.png")},
                           content_type="multipart/form-data")
    assert_error(response, 400, "invalid_filter", mentions="filters is nested too deeply")
    assert (counts(catalog), media_files(catalog)) == (before, files)


def test_nesting_limit_is_exact() -> None:
    """MAX_JSON_DEPTH levels parse; one more is refused even though the parser could read it."""
    assert parse_json(deep(MAX_JSON_DEPTH), "doc") is not None
    assert parse_json(json.dumps({"a": [{"b": 1}] * 3}), "doc") == {"a": [{"b": 1}] * 3}
    with pytest.raises(ApiError, match="doc is nested too deeply") as info:
        parse_json(deep(MAX_JSON_DEPTH + 1), "doc")
    assert info.value.status == 400
    with pytest.raises(ApiError, match="not valid JSON"):
        parse_json("[1,", "doc")


# --------------------------------------------------------------------------- numbers no float holds
def test_huge_integer_in_a_query_vector_is_400_naming_the_field(client: FlaskClient) -> None:
    vector = [10**400] + [0.0] * (DIM - 1)
    response = client.post("/api/v1/search", data=json.dumps({"vector": vector}), content_type="application/json")
    error = assert_error(response, 400, "invalid_parameter", mentions="vector")
    assert error["message"].startswith("vector:") and error["details"]["parameter"] == "vector"


def test_integers_past_float32_but_within_float64_still_search(client: FlaskClient) -> None:
    """10**300 is not a float32, but the vector is scaled before narrowing: a valid direction."""
    response = client.post("/api/v1/search", data=json.dumps({"vector": [10**300] + [0] * (DIM - 1)}),
                           content_type="application/json")
    assert response.status_code == 200, response.json


# --------------------------------------------------------------------------- ids past the database's integers
@pytest.mark.parametrize("job_id", ["99999999999999999999", str(2**63), str(2**63 - 1), "0"])
def test_job_ids_no_row_can_have_are_404(client: FlaskClient, job_id: str) -> None:
    assert_error(client.get(f"/api/v1/jobs/{job_id}"), 404, "not_found")


def test_ui_page_number_past_the_database_integers_is_an_empty_page(client: FlaskClient) -> None:
    response = client.get("/?page=99999999999999999999")
    assert response.status_code == 200 and response.mimetype == "text/html"


# --------------------------------------------------------------------------- external ids the catalog would change
@pytest.mark.parametrize("raw, quoted", [(" id ", "%20id%20"), ("id ", "id%20"), ("\tid", "%09id")])
def test_put_with_an_id_the_catalog_would_strip_is_400_and_writes_nothing(
        client: FlaskClient, catalog: Catalog, auth: dict, raw: str, quoted: str) -> None:
    before, files = counts(catalog), media_files(catalog)
    response = client.put(f"/api/v1/items/{quoted}", data={"image": (io.BytesIO(png_bytes(901)), "a.png")},
                          content_type="multipart/form-data", headers=auth)
    error = assert_error(response, 400, "invalid_parameter", mentions="would be stored as 'id'")
    assert error["details"]["parameter"] == "external_id"
    # JSON (metadata only): the same 400, not the 409 of "no images yet"
    response = client.put(f"/api/v1/items/{quoted}", json={"title": "x"}, headers=auth)
    assert_error(response, 400, "invalid_parameter", mentions="external_id")
    assert (counts(catalog), media_files(catalog)) == (before, files)
    assert client.get("/api/v1/items/id").status_code == 404


def test_put_with_a_clean_id_still_saves_and_embeds(client: FlaskClient, catalog: Catalog, auth: dict) -> None:
    response = client.put("/api/v1/items/clean-id", data={"image": (io.BytesIO(png_bytes(902)), "a.png")},
                          content_type="multipart/form-data", headers=auth)
    assert response.status_code == 201, response.json
    assert response.json["external_id"] == "clean-id" and response.json["embedding"]["queued"] == 1


# --------------------------------------------------------------------------- streamed bodies past the cap
class LazyBody(io.RawIOBase):
    """A request body produced on demand (``size`` bytes of a JSON array), counting what is read."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self.read_bytes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self.size - self.read_bytes)
        if n <= 0:
            return 0
        chunk = (b"[" if self.read_bytes == 0 else b"") + b"1," * n
        buffer[:n] = chunk[:n]
        self.read_bytes += n
        return n


def chunked(client: FlaskClient, path: str, stream: Any, content_type: str) -> TestResponse:
    """A POST the way a WSGI server hands over a chunked one: no Content-Length, terminated input
    (the test client would measure the stream and set a length, so the environ is finished here)."""
    environ = EnvironBuilder(path, method="POST", content_type=content_type,
                             headers={"Transfer-Encoding": "chunked"}).get_environ()
    environ.pop("CONTENT_LENGTH", None)
    environ.update({"wsgi.input": stream, "wsgi.input_terminated": True})
    return client.open(Request(environ))


def test_chunked_json_body_over_the_cap_is_413_without_reading_it_all(client: FlaskClient) -> None:
    body = LazyBody(50 * 1024 * 1024)
    response = chunked(client, "/api/v1/search", body, "application/json")
    assert_error(response, 413, "payload_too_large")
    assert body.read_bytes <= JSON_BODY_LIMIT + 64 * 1024


def test_chunked_json_body_at_the_cap_is_read_whole(client: FlaskClient) -> None:
    """Exactly the cap is allowed (the answer is about the body's content); one byte more is 413."""
    doc = b'{"k": 0}'
    exact = doc + b" " * (JSON_BODY_LIMIT - len(doc))
    response = chunked(client, "/api/v1/search", io.BytesIO(exact), "application/json")
    assert_error(response, 400, "invalid_parameter", mentions="k")
    response = chunked(client, "/api/v1/search", io.BytesIO(exact + b" "), "application/json")
    assert_error(response, 413, "payload_too_large")


def test_chunked_multipart_over_the_upload_cap_is_413_and_writes_nothing(catalog: Catalog, auth: dict) -> None:
    settings = catalog.settings.replace(max_image_bytes=200_000)
    app = create_app(settings, watch_index=False)
    try:
        before, files = counts(catalog), media_files(catalog)
        boundary = "bad-input-boundary"
        data = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"big.png\"\r\n"
                f"Content-Type: image/png\r\n\r\n").encode() + b"\0" * 600_000 + f"\r\n--{boundary}--\r\n".encode()
        assert len(data) > settings.max_image_bytes + MULTIPART_OVERHEAD
        response = chunked(app.test_client(), "/api/v1/search", io.BytesIO(data),
                           f"multipart/form-data; boundary={boundary}")
        assert_error(response, 413, "payload_too_large")
        assert (counts(catalog), media_files(catalog)) == (before, files)
    finally:
        app.extensions["lookalike"].close()


@pytest.fixture
def http_server(app: Flask) -> Iterator[int]:
    """The app behind Werkzeug's HTTP server, which de-chunks bodies as gunicorn does."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.port
    server.shutdown()
    thread.join(5)


def test_chunked_over_real_http_is_413(http_server: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", http_server, timeout=30)
    try:
        piece = b"1," * 32 * 1024

        def body() -> Iterator[bytes]:
            yield b"["
            for _ in range((3 * JSON_BODY_LIMIT) // len(piece)):
                yield piece

        conn.request("POST", "/api/v1/search", body=body(), encode_chunked=True,
                     headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
        response = conn.getresponse()
        assert response.status == 413
        assert json.loads(response.read())["error"]["code"] == "payload_too_large"
    finally:
        conn.close()


# --------------------------------------------------------------------------- SSRF: the address check
@pytest.mark.parametrize("address, public", [
    # IPv4
    ("93.184.216.34", True), ("8.8.8.8", True),
    ("127.0.0.1", False), ("10.1.2.3", False), ("172.16.0.1", False), ("192.168.1.1", False),
    ("169.254.169.254", False), ("100.64.0.1", False), ("0.0.0.0", False), ("224.0.0.1", False),
    ("255.255.255.255", False), ("192.0.2.1", False), ("198.18.0.1", False),
    # IPv6 native
    ("2606:2800:220:1:248:1893:25c8:1946", True), ("2001:4860:4860::8888", True),
    ("::1", False), ("::", False), ("fe80::1", False), ("fc00::1", False), ("fd12:3456::1", False),
    ("ff02::1", False), ("2001:db8::1", False), ("100::1", False),
    ("fec0::1", False), ("feff:ffff::1", False),  # site-local fec0::/10
    ("2001:0:5ef5:79fd::1", False),  # Teredo
    # IPv4-mapped ::ffff:a.b.c.d
    ("::ffff:93.184.216.34", True), ("::ffff:127.0.0.1", False), ("::ffff:10.0.0.1", False),
    ("::ffff:169.254.169.254", False),
    # IPv4-compatible (deprecated) and IPv4-translated: never public
    ("::127.0.0.1", False), ("::93.184.216.34", False), ("::ffff:0:7f00:1", False),
    # 6to4 2002:AABB:CCDD::/48 embeds A.B.C.D
    ("2002:a9fe:a9fe::", False), ("2002:a9fe:a9fe:1::1", False), ("2002:7f00:1::1", False),
    ("2002:0a00:0001::1", False), ("2002:c0a8:0101::1", False), ("2002:5db8:d822::1", True),
    # NAT64 well-known prefix 64:ff9b::/96, and local-use 64:ff9b:1::/48
    ("64:ff9b::a9fe:a9fe", False), ("64:ff9b::7f00:1", False), ("64:ff9b::a00:1", False),
    ("64:ff9b::5db8:d822", True), ("64:ff9b:1::5db8:d822", False),
])
def test_address_policy(address: str, public: bool) -> None:
    assert is_public_address(ipaddress.ip_address(address)) is public


@pytest.mark.parametrize("address, ipv4", [
    ("::ffff:169.254.169.254", "169.254.169.254"), ("2002:a9fe:a9fe::", "169.254.169.254"),
    ("64:ff9b::a9fe:a9fe", "169.254.169.254"), ("2606:2800:220:1::1", None), ("64:ff9b:1::1", None),
])
def test_embedded_ipv4(address: str, ipv4: str | None) -> None:
    found = embedded_ipv4(ipaddress.IPv6Address(address))
    assert (str(found) if found is not None else None) == ipv4


# --------------------------------------------------------------------------- response headers
def test_json_answers_are_nosniff(client: FlaskClient) -> None:
    for response in (client.get("/api/v1/items/sku-000"), client.get("/api/v1/items/nope"),
                     client.get("/healthz")):
        assert response.mimetype == "application/json"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert_error(client.get("/api/v1/items/nope"), 404, "not_found")


@pytest.mark.parametrize("path, status", [("/", 200), ("/items/sku-000", 200), ("/search", 200), ("/jobs", 200),
                                          ("/duplicates", 200),
                                          ("/api/v1/docs", 200), ("/no-such-page", 404)])
def test_html_pages_are_nosniff_unframeable_and_under_the_csp(client: FlaskClient, path: str, status: int) -> None:
    response = client.get(path)
    assert response.status_code == status and response.mimetype == "text/html"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    policy = API_DOCS_CONTENT_SECURITY_POLICY if path == "/api/v1/docs" else UI_CONTENT_SECURITY_POLICY
    assert response.headers["Content-Security-Policy"] == policy
    # the policy allows no inline code: the pages must not need any
    html = response.get_data(as_text=True)
    assert "<script>" not in html and " style=" not in html and " onclick=" not in html and "javascript:" not in html


def test_static_and_media_files_are_nosniff(client: FlaskClient) -> None:
    assert client.get("/static/app.js").headers["X-Content-Type-Options"] == "nosniff"
    url = client.get("/api/v1/items/sku-000").json["images"][0]["url"]
    assert client.get(url).headers["X-Content-Type-Options"] == "nosniff"


CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic"]
RECORD_VIOLATIONS = ("window.__csp = []; document.addEventListener('securitypolicyviolation', "
                     "e => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));")


def test_the_ui_works_under_its_csp_in_a_browser(http_server: int, tmp_path: Any) -> None:
    """Every page renders with no CSP violation: styles, script, images, and the upload preview (blob:)."""
    from playwright.sync_api import sync_playwright

    base = f"http://127.0.0.1:{http_server}"
    photo = tmp_path / "q.png"
    photo.write_bytes(png_bytes(31, size=64))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.add_init_script(RECORD_VIOLATIONS)
            for path in ("/", "/items/sku-000", "/jobs", "/duplicates", "/api/v1/docs"):
                page.goto(base + path)
                page.wait_for_load_state("load")
                assert page.evaluate("window.__csp") == [], path
                assert page.evaluate("getComputedStyle(document.body).margin") != "8px", path  # style.css applied
            page.goto(base + "/items/sku-000")
            page.wait_for_function("() => Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
            page.goto(base + "/search")
            page.set_input_files("#image", str(photo))
            page.wait_for_function("() => { const i = document.getElementById('preview');"
                                   " return !i.hidden && i.complete && i.naturalWidth === 64; }")
            assert page.evaluate("window.__csp") == []
        finally:
            browser.close()
