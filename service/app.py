"""``create_app(settings)``: the Flask application, built explicitly, never at import time.

The JSON API lives under ``/api/v1`` (blueprints in :mod:`service.api`), the web UI
at ``/`` (:mod:`service.ui`). The app holds one :class:`ServiceContext`: database
engine, media store, job dispatcher, searcher and metrics. Nothing heavy happens
here: the searcher loads the index when it is started (gunicorn's
``post_worker_init``) or on the first query.
"""

from __future__ import annotations

from flask import Flask, Response
from sqlalchemy import event
from werkzeug.routing import IntegerConverter, Map

from core.config import Settings
from core.db import make_engine, make_session_factory
from core.db.backend import Backend, backend_of
from core.dispatch import TaskDispatcher
from core.media import MediaStore
from service.api import api_blueprint
from service.api.params import DB_INT_MAX
from service.auth import KeyChecker, init_auth
from service.celery_client import CeleryDispatcher
from service.context import NoDispatcher, ServiceContext, install_context
from service.csp import UI_CONTENT_SECURITY_POLICY
from service.errors import register_error_handlers
from service.metrics import Metrics, init_metrics
from service.proxy import TrustedProxies
from service.requestlog import init_request_ids
from service.searcher import Searcher
from service.ui import ui_blueprint
from service.uploads import JSON_BODY_LIMIT, ServiceRequest
from service.urlfetch import UrlFetcher

SQLITE_MMAP_BYTES = 4 << 30


class DatabaseIntConverter(IntegerConverter):
    """``<int:...>`` in URLs, bounded by what the database holds.

    A larger number (``/jobs/99999999999999999999``) does not match the route, so it is a
    404 like any other id that names nothing, instead of an overflow inside the driver.
    """

    def __init__(self, map: Map, fixed_digits: int = 0, min: int | None = None,  # noqa: A002 (Werkzeug's names)
                 max: int | None = None, signed: bool = False) -> None:  # noqa: A002
        super().__init__(map, fixed_digits=fixed_digits, min=min,
                         max=DB_INT_MAX if max is None else max, signed=signed)


def _sqlite_read_tuning(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    """Read the SQLite file through a shared memory map instead of read() calls.

    Every query of a search touches a few B-tree pages of a large file; mapped, they
    come straight from the page cache (shared by all workers, like the index file)
    instead of being copied into each connection's private page cache.
    """
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA mmap_size={SQLITE_MMAP_BYTES}")
    cursor.close()


def default_dispatcher(settings: Settings) -> TaskDispatcher:
    """Celery with a broker; otherwise a stand-in that answers 503 (the CLI wires the in-process one)."""
    return CeleryDispatcher(settings) if settings.broker_url else NoDispatcher()


def create_app(settings: Settings, *, dispatcher: TaskDispatcher | None = None,
               watch_index: bool = True) -> Flask:
    """Build the app. ``watch_index=False`` disables the hot-swap thread (one-shot tools)."""
    app = Flask(__name__, template_folder="ui/templates", static_folder="ui/static",
                static_url_path="/static")
    app.request_class = ServiceRequest  # the body cap also holds for chunked bodies
    app.url_map.converters["int"] = DatabaseIntConverter  # before any route is added
    # The default request-body cap (JSON bodies); upload endpoints raise it per request.
    app.config["MAX_CONTENT_LENGTH"] = JSON_BODY_LIMIT
    app.config["MAX_FORM_MEMORY_SIZE"] = JSON_BODY_LIMIT
    app.json.sort_keys = False  # keep the documented field order; also cheaper

    engine = make_engine(settings)
    if backend_of(engine) is Backend.SQLITE:
        event.listen(engine, "connect", _sqlite_read_tuning)
    sessions = make_session_factory(engine)
    metrics = Metrics()
    context = ServiceContext(
        settings=settings,
        engine=engine,
        sessions=sessions,
        media=MediaStore.from_settings(settings),
        dispatcher=dispatcher or default_dispatcher(settings),
        searcher=Searcher(settings, engine, sessions, metrics, watch=watch_index),
        metrics=metrics,
        url_fetcher=UrlFetcher(settings.url_fetch_allowed_hosts, settings.max_image_bytes)
        if settings.url_fetch_enabled else None,
    )
    install_context(app, context)
    init_auth(app, KeyChecker(sessions, admin_key=settings.admin_api_key, reads_public=settings.reads_public))
    init_request_ids(app)
    init_metrics(app, metrics)
    register_error_handlers(app)
    app.after_request(security_headers)
    app.register_blueprint(api_blueprint)
    app.register_blueprint(ui_blueprint)
    if settings.trusted_proxies:  # the client's address as the proxy saw it (service/proxy.py)
        app.wsgi_app = TrustedProxies(app.wsgi_app, settings.trusted_proxy_networks)  # type: ignore[method-assign]
    return app


def security_headers(response: Response) -> Response:
    """Headers that stop browsers from reinterpreting answers: on every response (JSON, HTML,
    images, static files) ``nosniff``; on HTML pages also no framing and the UI's CSP.

    ``setdefault``: a view that sets its own value keeps it.
    """
    headers = response.headers
    headers.setdefault("X-Content-Type-Options", "nosniff")
    if response.mimetype == "text/html":
        headers.setdefault("X-Frame-Options", "DENY")
        headers.setdefault("Content-Security-Policy", UI_CONTENT_SECURITY_POLICY)
    return response
