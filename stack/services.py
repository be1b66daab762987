"""The seven services of the full stack, as native processes on loopback.

The application commands are the ones docker-compose.yml runs (tests/test_compose.py
checks that they agree): ``alembic upgrade head``, ``lookalike serve``,
``lookalike proxy`` (nginx, on the public port, in front of gunicorn on an internal
one: docs/OPERATIONS.md "Behind nginx"), ``lookalike worker --queues embed,index,train``,
``lookalike beat``. Only the addresses (loopback here) and the way ``lookalike`` is
invoked (``python -m cli`` from the source tree) differ. PostgreSQL and Redis keep
their data under ``<home>/stack/``, so a second ``make stack`` finds the catalog
where it was left.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from core.config import Settings
from stack.process import ProcessSpec

REPO = Path(__file__).resolve().parents[1]

MIGRATE_COMMAND = ("alembic", "upgrade", "head")
API_ARGS = ("serve", "--workers", "2")
PROXY_ARGS = ("proxy",)
WORKER_ARGS = ("worker", "--queues", "embed,index,train", "--concurrency", "2")
BEAT_ARGS = ("beat",)
"""``lookalike`` arguments shared with docker-compose.yml (which adds the addresses: ``--bind 0.0.0.0:8000``,
``--listen 0.0.0.0:8000 --upstream api:8000``)."""
LOOPBACK = "127.0.0.1"

DATABASE = "lookalike"


class StackError(RuntimeError):
    """The stack cannot start; the message says which service and why."""


@dataclass(frozen=True)
class StackConfig:
    """Where the stack keeps its data and which loopback ports it uses."""

    home: Path
    api_port: int = 8000
    """The public port: nginx listens here."""
    gunicorn_port: int = 8001
    """gunicorn, on loopback behind nginx."""
    postgres_port: int = 54329
    redis_port: int = 63799
    """Not the system defaults (5432, 6379): a distribution's own servers may hold those."""
    api_workers: int = 2
    worker_concurrency: int = 2

    @property
    def root(self) -> Path:
        return self.home.resolve() / "stack"

    @property
    def log_dir(self) -> Path:
        return self.root / "logs"

    @property
    def api_url(self) -> str:
        """The API as clients see it: through nginx."""
        return f"http://{LOOPBACK}:{self.api_port}"

    @property
    def gunicorn_url(self) -> str:
        """gunicorn itself, bypassing nginx (the supervisor's readiness check)."""
        return f"http://{LOOPBACK}:{self.gunicorn_port}"

    def app_settings(self, base: Settings) -> Settings:
        """``base`` pointed at this stack's PostgreSQL and Redis, trusting its nginx's forwarded headers."""
        redis = f"redis://127.0.0.1:{self.redis_port}"
        return base.replace(
            trusted_proxies=(LOOPBACK,),
            home=self.home.resolve(),
            database_url=f"postgresql+psycopg://postgres@127.0.0.1:{self.postgres_port}/{DATABASE}",
            broker_url=f"{redis}/0", result_backend=f"{redis}/1", redis_url=f"{redis}/0",
        )


def pg_binary(name: str) -> str:
    """A PostgreSQL server binary: on PATH, or in Debian's versioned directory."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not candidates:
        raise StackError(f"PostgreSQL's {name!r} is not installed (Debian: apt-get install postgresql)")
    return candidates[-1]


def postgres_user() -> str | None:
    """PostgreSQL refuses to run as root: as root, run it as the ``postgres`` system user."""
    return "postgres" if os.geteuid() == 0 else None


def init_postgres(config: StackConfig) -> Path:
    """Create the cluster on first use (trust authentication, loopback only)."""
    data = config.root / "postgres"
    if (data / "PG_VERSION").exists():
        return data
    data.mkdir(parents=True, exist_ok=True)
    user = postgres_user()
    if user:
        shutil.chown(data, user, user)
    result = subprocess.run(
        [pg_binary("initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C"],
        capture_output=True, text=True, user=user, cwd="/",
    )
    if result.returncode != 0:
        shutil.rmtree(data, ignore_errors=True)
        hint = (f"; the {user!r} user must be able to reach {config.root} (every parent directory "
                "needs the x permission for others), or set LOOKALIKE_HOME elsewhere") if user else ""
        raise StackError(f"initdb failed{hint}:\n{result.stderr.strip()}")
    return data


def create_database(config: StackConfig) -> None:
    """Create the ``lookalike`` database if the cluster does not have it yet."""
    psql = [shutil.which("psql") or pg_binary("psql"), "-h", "127.0.0.1", "-p", str(config.postgres_port),
            "-U", "postgres", "-d", "postgres", "-tAc"]
    found = subprocess.run([*psql, f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"],
                           capture_output=True, text=True, check=True)
    if found.stdout.strip() != "1":
        subprocess.run([*psql, f'CREATE DATABASE "{DATABASE}"'], capture_output=True, text=True, check=True)


def service_specs(config: StackConfig, settings: Settings) -> list[ProcessSpec]:
    """Every service in start order; stopping goes the other way."""
    app_env = settings.to_env()
    python = sys.executable
    lookalike = (python, "-m", "cli")
    socket_dir = config.root / "run"
    return [
        ProcessSpec(
            "postgres",
            (pg_binary("postgres"), "-D", str(config.root / "postgres"), "-p", str(config.postgres_port),
             "-h", "127.0.0.1", "-k", str(socket_dir)),
            user=postgres_user(), cwd=Path("/"),
            # SIGINT is PostgreSQL's "fast" shutdown: it disconnects the API's pooled
            # connections instead of waiting for them (SIGTERM's "smart" mode would).
            stop_signal=signal.SIGINT,
        ),
        ProcessSpec(
            "redis",
            ("redis-server", "--port", str(config.redis_port), "--bind", "127.0.0.1",
             "--dir", str(config.root / "redis"), "--save", "", "--appendonly", "yes"),
        ),
        ProcessSpec("migrate", (python, "-m", *MIGRATE_COMMAND), env=app_env, cwd=REPO, oneshot=True),
        ProcessSpec(
            "api", (*lookalike, *_replace_option(API_ARGS, "--workers", str(config.api_workers)),
                    "--bind", f"{LOOPBACK}:{config.gunicorn_port}"),
            env=app_env, cwd=REPO, stop_timeout=35.0,  # gunicorn's graceful_timeout is 30 s
        ),
        ProcessSpec(
            "nginx", (*lookalike, *PROXY_ARGS, "--listen", f"{LOOPBACK}:{config.api_port}",
                      "--upstream", f"{LOOPBACK}:{config.gunicorn_port}", "--dir", str(config.root / "nginx")),
            # SIGQUIT is nginx's graceful shutdown (requests in flight finish; at most
            # worker_shutdown_timeout, 10 s); then the group is killed.
            env=app_env, cwd=REPO, stop_signal=signal.SIGQUIT, stop_timeout=15.0,
        ),
        ProcessSpec(
            "worker", (*lookalike, *_replace_option(WORKER_ARGS, "--concurrency", str(config.worker_concurrency))),
            # Celery's warm shutdown lets running tasks finish; a long build past the
            # timeout is killed and, being a job with a heartbeat, sent again later.
            env=app_env, cwd=REPO, stop_timeout=30.0,
        ),
        ProcessSpec("beat", (*lookalike, *BEAT_ARGS), env=app_env, cwd=REPO, stop_timeout=10.0),
    ]


def _replace_option(args: tuple[str, ...], option: str, value: str) -> tuple[str, ...]:
    out = list(args)
    out[out.index(option) + 1] = value
    return tuple(out)
