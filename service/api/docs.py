"""The OpenAPI document, and the page that renders it with Swagger UI.

Swagger UI's files come from the ``flask-swagger-ui`` package (pinned in
requirements.lock), served by :data:`assets_bp` under ``/static/swagger-ui/``: the page
loads nothing from another host. ``service/ui/static/api-docs.js`` starts it on the
document at ``/api/v1/openapi.json``. The page has no inline script; its CSP is the UI's
plus ``data:`` images (service/csp.py).
"""

from __future__ import annotations

from importlib.resources import files

from flask import Blueprint, Response, jsonify, render_template

from service.api.params import check_params
from service.context import service_context
from service.csp import API_DOCS_CONTENT_SECURITY_POLICY
from service.openapi import build_spec

SWAGGER_UI_DIR = str(files("flask_swagger_ui") / "dist")
"""Swagger UI's distribution files as the package ships them (``swagger-ui-bundle.js``, ``swagger-ui.css``)."""

bp = Blueprint("docs", __name__)
assets_bp = Blueprint("swagger_ui", __name__, static_folder=SWAGGER_UI_DIR, static_url_path="/static/swagger-ui")


def _spec() -> dict:
    ctx = service_context()
    state = ctx.searcher.holder.state  # never triggers a load: the document must always answer
    return build_spec(ctx.settings, vector_dim=state.dim if state is not None else None)


@bp.get("/openapi.json")
def openapi_json() -> Response:
    check_params(())
    return jsonify(_spec())


@bp.get("/docs")
def docs() -> Response:
    check_params(())
    response = Response(render_template("api_docs.html"), mimetype="text/html")
    response.headers["Content-Security-Policy"] = API_DOCS_CONTENT_SECURITY_POLICY  # data: icons, service/csp.py
    return response
