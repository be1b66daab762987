"""The OpenAPI document matches the routes: every API route documented, keys where the code asks for them."""

from __future__ import annotations

import re

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


def test_docs_page_lists_the_operations(client) -> None:
    page = client.get("/api/v1/docs").get_data(as_text=True)
    assert "/api/v1/items/{external_id}/similar" in page and "required" in page and "1 - distance²/2" in page
