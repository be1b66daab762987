"""`lookalike keys` and `lookalike serve` (the parts that run without starting a server)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from cli.main import lookalike
from cli.serve import gunicorn_argv
from tests.service.live import REPO


def run(home: Path, *args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(lookalike, list(args), env={"LOOKALIKE_HOME": str(home)}, catch_exceptions=False)


def test_keys_create_list_revoke(tmp_path: Path) -> None:
    created = run(tmp_path, "keys", "create", "shop-frontend")
    assert created.exit_code == 0, created.output
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("lk_") and len(key) > 40
    listed = run(tmp_path, "keys", "list")
    assert "shop-frontend" in listed.output and key[:11] in listed.output and key not in listed.output
    assert "revoked -" in listed.output
    assert run(tmp_path, "keys", "create", "shop-frontend").exit_code != 0
    revoked = run(tmp_path, "keys", "revoke", "shop-frontend")
    assert revoked.exit_code == 0 and "revoked" in revoked.output
    assert "revoked -" not in run(tmp_path, "keys", "list").output
    missing = run(tmp_path, "keys", "revoke", "nobody")
    assert missing.exit_code != 0 and "no key named" in missing.output


def test_serve_runs_gunicorn_with_the_service_config() -> None:
    argv = gunicorn_argv(bind="0.0.0.0:9000", workers=3, timeout=45)
    assert argv[1:5] == ["-m", "gunicorn", "-c", "python:service.gunicorn_conf"]
    assert argv[argv.index("--bind") + 1] == "0.0.0.0:9000" and argv[argv.index("--workers") + 1] == "3"
    assert argv[argv.index("--timeout") + 1] == "45" and argv[-1] == "cli.serve:wsgi_app()"
    assert "--help" not in argv


def test_broker_mode_workers_do_not_load_the_worker_package(tmp_path: Path) -> None:
    code = ("import sys; from cli.serve import wsgi_app; app = wsgi_app(); "
            "print(type(app.extensions['lookalike'].dispatcher).__name__, 'worker.local' in sys.modules, "
            "','.join(sorted(m for m in sys.modules if m.split('.')[0] == 'trainer')))")
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "PYTHONPATH": str(REPO), "LOOKALIKE_HOME": str(tmp_path)}
    broker = subprocess.run([sys.executable, "-c", code], env={**env, "LOOKALIKE_BROKER_URL": "redis://127.0.0.1:1/0"},
                            capture_output=True, text=True, timeout=120)
    # of the trainer, only the torch-free config modules that validate retrain overrides
    # (docs/DECISIONS.md, "Worker may import trainer")
    config_modules = ",".join(["trainer", "trainer.config", "trainer.config_tree",
                               "trainer.miner_modes", "trainer.retrain_config"])
    assert broker.stdout.split() == ["CeleryDispatcher", "False", config_modules], broker.stderr[-2000:]
    embedded = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert embedded.stdout.split()[:2] == ["InProcessDispatcher", "True"], embedded.stderr[-2000:]


def test_gunicorn_config_never_preloads_the_app(tmp_path: Path) -> None:
    code = ("import os, service.gunicorn_conf as c, sys; "
            "print(c.preload_app, c.worker_class, 'service.app' in sys.modules, "
            "'prometheus_client' in sys.modules, 'torch' in sys.modules, "
            "[n for n in os.listdir(os.environ['TMPDIR']) if n.startswith('lookalike')]); "
            "c.on_starting(None); d = os.environ[c.METRICS_DIR_ENV]; print(os.path.isdir(d)); "
            "c.on_exit(None); print(os.path.exists(d))")
    out = subprocess.run([sys.executable, "-c", code],
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "TMPDIR": str(tmp_path)},
                         capture_output=True, text=True, timeout=120)
    # the master imports neither the app nor prometheus_client (which fixes its mode at import),
    # and reading the config creates nothing: the metrics directory comes with the master's start;
    # it does import torch, whose relocated pages the forked workers then share
    assert out.stdout.split() == ["False", "gthread", "False", "False", "True", "[]", "True", "False"], \
        out.stderr[-2000:]
