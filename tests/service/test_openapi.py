"""The OpenAPI document matches the routes: every API route documented, keys where the code asks for them."""

from __future__ import annotations

import re
from importlib.resources import files

from flask import Flask

from service.auth import Access
from service.openapi import build_spec

METHODS = {"GET", "PUT", "POST", "DELETE", "PATCH"}


def routes(app: Flask) -> dict[tuple[str, str], object]:
    out = {}
    for rule in app.url_map.iter_rules():
        if not (rule.rule.startswith("/api/") or rule.rule in {"/healthz", "/readyz", "/metrics"}):
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        for method in rule.methods & METHODS:
            out[(method, path)] = app.view_functions[rule.endpoint]
    return out


def test_every_route_is_documented_and_nothing_else(app: Flask) -> None:
    spec = app.test_client().get("/api/v1/openapi.json").json
    documented = {(m.upper(), p) for p, item in spec["paths"].items() for m in item if m.upper() in METHODS}
    assert documented == set(routes(app))


def test_security_matches_the_views(app: Flask) -> None:
    spec = build_spec(app.extensions["lookalike"].settings)
    for (method, path), view in routes(app).items():
        operation = spec["paths"][path][method.lower()]
        access = getattr(view, "required_access", None)
        security = operation.get("security")
        if access is Access.WRITE:
            assert security and {} not in security, (method, path)
            assert "401" in operation["responses"], (method, path)
        elif access is Access.READ:
            assert security and {} in security, (method, path)  # public reads, key accepted
        else:
            assert security is None, (method, path)


def test_settings_flow_into_the_document(app: Flask) -> None:
    settings = app.extensions["lookalike"].settings
    spec = build_spec(settings.replace(max_k=7, reads_public=False), vector_dim=32)
    assert spec["components"]["parameters"]["k"]["schema"]["maximum"] == 7
    assert spec["components"]["schemas"]["SearchRequest"]["properties"]["vector"]["maxItems"] == 32
    assert {} not in spec["paths"]["/api/v1/items"]["get"]["security"]
    assert "x-access" not in str(spec)
    # every error answer shares one schema
    for name, response in spec["components"]["responses"].items():
        if name not in {"JobAccepted", "UriTooLong"}:
            assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}


def test_docs_page_loads_swagger_ui_from_the_package_and_nothing_from_elsewhere(client) -> None:
    page = client.get("/api/v1/docs")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert "http:" not in html and "https:" not in html and '="//' not in html  # no other host, no CDN
    assert 'data-spec-url="/api/v1/openapi.json"' in html
    assets = re.findall(r"(?:src|href)=\"(/static/[^\"]+)\"", html)
    assert {"/static/swagger-ui/swagger-ui-bundle.js", "/static/swagger-ui/swagger-ui.css",
            "/static/api-docs.js"} <= set(assets)
    dist = files("flask_swagger_ui") / "dist"
    for asset in assets:
        response = client.get(asset)
        assert response.status_code == 200, asset
        if asset.startswith("/static/swagger-ui/"):  # byte for byte the package's file
            assert response.get_data() == (dist / asset.removeprefix("/static/swagger-ui/")).read_bytes()
    assert client.get("/static/swagger-ui/no-such-file.js").status_code == 404
