"""Request ids: accept or mint one per request, echo it, and stamp it on every log line.

The id comes from a well-formed ``X-Request-ID`` header (so a proxy's id carries
through) or is minted here. It is put on *every* ``LogRecord`` created while the
request is handled — by our code, SQLAlchemy, werkzeug, anything — through a
record factory, so any formatter can use ``%(request_id)s``; records made outside a
request get ``-``. :class:`RequestIdFilter` does the same for logging configs that
are set up before the app exists (gunicorn's ``logconfig_dict``).
"""

from __future__ import annotations

import logging
import re
import threading
import uuid
from typing import Any

from flask import Flask, Response, g, has_request_context, request

REQUEST_ID_HEADER = "X-Request-ID"
LOG_FORMAT = "%(asctime)s %(levelname)s [%(process)d] [%(request_id)s] %(name)s: %(message)s"
_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_factory_lock = threading.Lock()
_factory_installed = False


def current_request_id() -> str:
    if has_request_context():
        return g.get("request_id") or "-"
    return "-"


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to records that lack it, for handler-level configuration."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = current_request_id()
        return True


def install_record_factory() -> None:
    """Wrap the global record factory once per process so every record has ``request_id``."""
    global _factory_installed
    with _factory_lock:
        if _factory_installed:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            record.request_id = current_request_id()
            return record

        logging.setLogRecordFactory(factory)
        _factory_installed = True


def init_request_ids(app: Flask) -> None:
    install_record_factory()

    @app.before_request
    def _assign_request_id() -> None:
        incoming = request.headers.get(REQUEST_ID_HEADER, "")
        g.request_id = incoming if _VALID_ID.match(incoming) else uuid.uuid4().hex

    @app.after_request
    def _echo_request_id(response: Response) -> Response:
        response.headers[REQUEST_ID_HEADER] = g.get("request_id") or "-"
        return response
