"""Quiet by default: no Alembic chatter from a migration or from gunicorn workers; all of it when verbose.

Alembic logs each migration step at INFO, and a "setup plugin" line per plugin module in
each process that imports it; they landed between an import's progress bar lines and in
every worker's start (core/logs.py). The processes here are the real ones a user starts.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.service.live import REPO, LiveServer
from tests.service.support import Catalog

MIGRATION_STEP = "Running upgrade  -> 0001"


def _run(args: list[str], home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {"PATH": "/usr/local/bin:/usr/bin:/bin", "PYTHONPATH": str(REPO), "LANG": "C.UTF-8",
               "LOOKALIKE_HOME": str(home), **env}
    return subprocess.run([sys.executable, *args], cwd=REPO, env=environ, capture_output=True, text=True,
                          timeout=300)


def test_a_migration_prints_no_alembic_lines_unless_verbose(tmp_path: Path) -> None:
    quiet = _run(["-m", "cli", "db", "upgrade"], tmp_path / "a")
    assert quiet.returncode == 0, quiet.stderr
    assert "alembic" not in quiet.stderr and "INFO" not in quiet.stderr, quiet.stderr
    assert quiet.stdout.startswith("database at revision head")
    verbose = _run(["-m", "cli", "--verbose", "db", "upgrade"], tmp_path / "b")
    assert verbose.returncode == 0 and MIGRATION_STEP in verbose.stderr, verbose.stderr
    # the embedded database migrated on first use, verbose from the environment
    listed = _run(["-m", "cli", "catalog", "list"], tmp_path / "c", LOOKALIKE_VERBOSE="true")
    assert listed.returncode == 0 and MIGRATION_STEP in listed.stderr, listed.stderr


def test_alembics_own_command_line_follows_the_same_setting(tmp_path: Path) -> None:
    args = ["-m", "alembic", "-c", str(REPO / "alembic.ini"), "upgrade", "head"]
    quiet = _run(args, tmp_path, LOOKALIKE_DATABASE_URL=f"sqlite:///{tmp_path / 'q.db'}")
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    verbose = _run(args, tmp_path, LOOKALIKE_DATABASE_URL=f"sqlite:///{tmp_path / 'v.db'}", LOOKALIKE_VERBOSE="true")
    assert verbose.returncode == 0 and MIGRATION_STEP in verbose.stderr, verbose.stderr


def test_an_unknown_log_level_is_refused_by_name(tmp_path: Path) -> None:
    refused = _run(["-m", "cli", "catalog", "list"], tmp_path, LOOKALIKE_LOG_LEVEL="chatty")
    assert refused.returncode == 2, refused.stderr
    assert "LOOKALIKE_LOG_LEVEL: 'chatty' is not one of debug, info" in refused.stderr, refused.stderr


@pytest.mark.slow
def test_serve_workers_start_without_library_lines_unless_verbose(catalog: Catalog, tmp_path: Path) -> None:
    logs = {}
    for verbose in (False, True):
        log = tmp_path / f"serve-{verbose}.log"
        LiveServer(catalog.settings.replace(verbose=verbose), log, workers=2).start().stop()
        logs[verbose] = log.read_text(errors="replace")
    quiet = logs[False]
    assert quiet.count("Booting worker with pid") == 2  # gunicorn's own lines stay
    assert "setup plugin" not in quiet and "alembic" not in quiet, quiet
    assert logs[True].count("setup plugin alembic.autogenerate.schemas") == 2, logs[True]
