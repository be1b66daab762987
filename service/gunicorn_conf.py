"""gunicorn settings for the API (``lookalike serve`` runs ``gunicorn -c python:service.gunicorn_conf``).

* ``preload_app = False``: the master never imports the app, so each worker builds
  its own app and memory-maps the index file itself. The pages of the mapping are
  the page cache's, shared by every worker; only a worker's own Python objects are
  private to it.
* ``gthread`` workers: keep-alive connections and a few concurrent requests per
  worker (Annoy and torch release the GIL while they compute).
* Each worker loads the active index in ``post_worker_init``, before it accepts a
  request, so the first queries do not pay for it.
* The master imports the heavy *libraries* (torch, torchvision, numpy, annoy via
  ``core.embedding`` and ``core.index``) before forking — not the app, not the
  index. Importing torch dirties ~280 MB of relocated library pages per process;
  imported once in the master they stay shared copy-on-write by every worker
  instead of being private to each.
* Prometheus multi-process mode: the master creates a fresh directory when it starts
  (``on_starting``, not at import: reading this file has no side effects) and puts it
  into ``PROMETHEUS_MULTIPROC_DIR``, which the forked workers inherit; ``/metrics`` then
  aggregates all workers. The master itself never imports prometheus_client,
  which picks its mode once, at import.
* Log lines carry the request id (``[%(request_id)s]``); the access log shows it too.
  Levels as everywhere (core/logs.py): the project's at ``LOOKALIKE_LOG_LEVEL``, libraries'
  warnings only unless ``LOOKALIKE_VERBOSE``.

Command-line options (``--bind``, ``--workers``, ``--timeout``) override these.
"""

from __future__ import annotations

import gc
import glob
import os
import shutil
import tempfile
from typing import Any

# core.embedding loads torch lazily (its spec is torch-free), so the torch-backed module is
# named here: without it every worker paid torch's ~280 MB of relocated pages privately
import core.embedding.embedder  # noqa: F401 - shared library pages, see above
import core.index  # noqa: F401
from core.config import Settings
from core.logs import project_levels, root_level
from service.requestlog import LOG_FORMAT

_settings = Settings.from_env()
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"

bind = "127.0.0.1:8000"
workers = 2
worker_class = "gthread"
threads = 4
preload_app = False
timeout = 60
"""A request (or a worker's index load) silent this long gets its worker restarted."""
graceful_timeout = 30
keepalive = 5
max_requests = 0
"""Workers are not recycled: each restart would re-read the index pages it needs."""
limit_request_line = 8190
control_socket_disable = True
"""No ``gunicornc`` socket: nothing uses it, and two servers of one user would share its path."""
accesslog = "-"
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms rid=%({x-request-id}o)s'

logconfig_dict: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "service.requestlog.RequestIdFilter"}},
    "formatters": {"plain": {"format": LOG_FORMAT}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["request_id"],
                    "stream": "ext://sys.stderr"},
    },
    # The project's loggers at LOOKALIKE_LOG_LEVEL, libraries' (Alembic's "setup plugin"
    # lines in every worker) warnings only unless LOOKALIKE_VERBOSE (core/logs.py).
    "root": {"level": root_level(_settings), "handlers": ["console"]},
    "loggers": {
        **{name: {"level": level} for name, level in project_levels(_settings).items()},
        # gunicorn's own start, worker and access lines, as a user of `lookalike serve` expects
        "gunicorn.error": {"level": "INFO", "handlers": ["console"], "propagate": False},
        "gunicorn.access": {"level": "INFO", "handlers": ["console"], "propagate": False},
    },
}


def on_starting(server: Any) -> None:
    """The master, before any worker exists: the shared metrics directory, inherited by the forks."""
    os.environ[METRICS_DIR_ENV] = tempfile.mkdtemp(prefix="lookalike-metrics-")


def pre_fork(server: Any, worker: Any) -> None:
    """Move the master's objects out of the collector's reach before forking.

    A worker's garbage collector would otherwise write to every inherited object
    header and turn the shared copy-on-write pages into private copies.
    """
    gc.freeze()


def post_worker_init(worker: Any) -> None:
    """Load the active index in the new worker before it serves anything."""
    context = worker.wsgi.extensions.get("lookalike")
    if context is not None:
        context.searcher.start()


def child_exit(server: Any, worker: Any) -> None:
    """Drop a dead worker's live gauges (prometheus_client's mark_process_dead, without importing it)."""
    for path in glob.glob(os.path.join(os.environ[METRICS_DIR_ENV], f"gauge_live*_{worker.pid}.db")):
        os.remove(path)


def on_exit(server: Any) -> None:
    shutil.rmtree(os.environ.pop(METRICS_DIR_ENV), ignore_errors=True)
