"""The JSON API: ``/api/v1`` (items, search, admin, OpenAPI) and the root ops endpoints."""

from flask import Blueprint

from service.api import admin, docs, duplicates, feedback, indexes, items, ops, search

api_blueprint = Blueprint("api", __name__)
_v1 = Blueprint("v1", __name__, url_prefix="/api/v1")
for module in (items, search, admin, indexes, duplicates, feedback, docs):
    _v1.register_blueprint(module.bp)
api_blueprint.register_blueprint(_v1)
api_blueprint.register_blueprint(ops.bp)
api_blueprint.register_blueprint(docs.assets_bp)

__all__ = ["api_blueprint"]
