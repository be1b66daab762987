"""Which log lines a process prints: the project's own at ``LOOKALIKE_LOG_LEVEL``, libraries' quiet.

A new user should see what Lookalike says, not what its libraries chat about: Alembic
logs every migration step and, when imported, a "setup plugin" line per plugin module at INFO,
which landed between an import's progress bar lines and in every gunicorn worker's start. So by
default the project's packages log at ``LOOKALIKE_LOG_LEVEL`` (INFO) and everything else
only warnings and errors; ``LOOKALIKE_VERBOSE=true`` (``lookalike --verbose``) lets the
libraries' lines through at ``LOOKALIKE_LOG_LEVEL`` too. The CLI, gunicorn
(``service/gunicorn_conf.py``) and the Alembic environment (``migrations/env.py``) all take
their levels from here (docs/CONFIG.md, "Logging").
"""

from __future__ import annotations

import logging

from core.config import LogLevel, Settings

PROJECT_PACKAGES = ("cli", "core", "migrations", "service", "stack", "trainer", "worker")
"""The top-level packages whose loggers (``getLogger(__name__)``) are the project's own."""

CLI_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def level_number(level: LogLevel) -> int:
    """``LOOKALIKE_LOG_LEVEL`` as the number the logging module uses."""
    return logging.getLevelNamesMapping()[level.value.upper()]


def root_level(settings: Settings) -> int:
    """The level of every logger outside the project: warnings unless verbose (or a stricter log level)."""
    own = level_number(settings.log_level)
    return own if settings.verbose else max(own, logging.WARNING)


def project_levels(settings: Settings) -> dict[str, int]:
    """Logger name -> level for the project's packages."""
    own = level_number(settings.log_level)
    return dict.fromkeys(PROJECT_PACKAGES, own)


def configure_logging(settings: Settings) -> None:
    """Lines to stderr for a CLI process (or Alembic's own command line), levels as above."""
    logging.basicConfig(level=root_level(settings), format=CLI_FORMAT)
    logging.getLogger().setLevel(root_level(settings))  # basicConfig keeps an existing handler's level
    for name, level in project_levels(settings).items():
        logging.getLogger(name).setLevel(level)
