"""The OpenAPI document and a server-rendered page that lists the operations."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, render_template

from service.api.params import check_params
from service.context import service_context
from service.openapi import build_spec, operations

bp = Blueprint("docs", __name__)


def _spec() -> dict:
    ctx = service_context()
    state = ctx.searcher.holder.state  # never triggers a load: the document must always answer
    return build_spec(ctx.settings, vector_dim=state.dim if state is not None else None)


@bp.get("/openapi.json")
def openapi_json() -> Response:
    check_params(())
    return jsonify(_spec())


@bp.get("/docs")
def docs() -> str:
    check_params(())
    spec = _spec()
    return render_template("api_docs.html", info=spec["info"], operations=operations(spec))
